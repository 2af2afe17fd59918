# Paths, input functions and settings of workflow/rules/maps.smk (helpers: no rules here).
MAPS = config["maps"]["enabled"]
MAP_VOLUMES = names.surface_volume_names(ENCODING) if MAPS else []
MAP_FIGURES = names.figure_names(ENCODING) if MAPS else []


def maps_dir(subject="{subject}"):
    return f"results/{DATASET}/subj{subject}/maps"


def surface_transform_files(wildcards):
    """The 8 NSD transforms of one subject (lh layerB1-3, lh fsaverage, then rh)."""
    return [
        nsd_file(key)
        for key in nsd_layout.surface_transform_keys(int(wildcards.subject))
    ]


def viewer_volume_names():
    """Surface maps the interactive viewer reads (maps.viewer_map, checked at startup)."""
    return names.viewer_volume_names(config["maps"]["viewer_map"], ENCODING)


def maps_targets():
    targets = []
    for subject in RUN_SUBJECTS:
        folder = maps_dir(subject)
        targets += [f"{folder}/surface/{name}.npz" for name in MAP_VOLUMES]
        targets += [f"{folder}/{name}.png" for name in MAP_FIGURES]
        targets += [f"{folder}/density_z_vs_c.png", f"{folder}/viewer.html"]
    return targets
