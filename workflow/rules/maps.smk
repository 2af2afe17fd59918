# Cortical maps of the encoding results: per subject, the encoding stage's NIfTI volumes go to
# fsaverage through NSD's own transforms (cubic, mean of three cortical depths, nearest to
# fsaverage), then figures on fsaverage5 (flat and inflated), a 2-D accuracy density and one
# interactive page, when maps.enabled (MAPS in common.smk).


if MAPS:

    rule project_to_surface:
        input:
            volumes=expand(
                f"{encoding_volumes_dir()}/{{name}}.nii.gz",
                name=MAP_VOLUMES,
                allow_missing=True,
            ),
            voxels=f"results/{DATASET}/subj{{subject}}/encoding/voxels.npz",
            transforms=surface_transform_files,
        output:
            maps=expand(
                f"{maps_dir()}/surface/{{name}}.npz",
                name=MAP_VOLUMES,
                allow_missing=True,
            ),
        log:
            f"logs/{DATASET}/project_to_surface/subj{{subject}}.log",
        conda:
            "../../envs/maps.yaml"
        resources:
            mem_mb=4000,
            runtime=20,
        params:
            names=MAP_VOLUMES,
            label_maps=names.label_volume_names(MAP_VOLUMES),
            interpolation=config["maps"]["interpolation"],
            nsd_root=NSD_ROOT,
        script:
            "../scripts/project_to_surface.py"

    rule plot_cortical_maps:
        input:
            maps=expand(
                f"{maps_dir()}/surface/{{name}}.npz",
                name=MAP_VOLUMES,
                allow_missing=True,
            ),
            block_names=f"{encoding_volumes_dir()}/unet_best_block.json",
        output:
            figures=[
                report(
                    f"{maps_dir()}/{name}.png",
                    caption="../report/maps.rst",
                    category="Encoding maps",
                    subcategory="subj{subject}",
                    labels={"subject": "{subject}", "map": name},
                )
                for name in MAP_FIGURES
            ],
        log:
            f"logs/{DATASET}/plot_cortical_maps/subj{{subject}}.log",
        conda:
            "../../envs/maps.yaml"
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            names=MAP_VOLUMES,
            figures=MAP_FIGURES,
            encoding=result_settings(config, "encoding", ENCODING_NAME_KEYS),
            dpi=config["maps"]["dpi"],
        script:
            "../scripts/plot_cortical_maps.py"

    rule plot_accuracy_density:
        input:
            x=f"{encoding_volumes_dir()}/z_r.nii.gz",
            y=f"{encoding_volumes_dir()}/c_r.nii.gz",
        output:
            figure=report(
                f"{maps_dir()}/density_z_vs_c.png",
                caption="../report/accuracy_density.rst",
                category="Encoding maps",
                subcategory="subj{subject}",
                labels={"subject": "{subject}", "map": "density z vs c"},
            ),
        log:
            f"logs/{DATASET}/plot_accuracy_density/subj{{subject}}.log",
        localrule: True
        conda:
            "../../envs/maps.yaml"
        params:
            dpi=config["maps"]["dpi"],
        script:
            "../scripts/plot_accuracy_density.py"

    rule view_surface:
        input:
            maps=expand(
                f"{maps_dir()}/surface/{{name}}.npz",
                name=viewer_volume_names(),
                allow_missing=True,
            ),
        output:
            page=report(
                f"{maps_dir()}/viewer.html",
                caption="../report/viewer.rst",
                category="Encoding maps",
                subcategory="subj{subject}",
                labels={"subject": "{subject}", "map": "interactive viewer"},
            ),
        log:
            f"logs/{DATASET}/view_surface/subj{{subject}}.log",
        localrule: True
        conda:
            "../../envs/maps.yaml"
        params:
            names=viewer_volume_names(),
            viewer_map=config["maps"]["viewer_map"],
        script:
            "../scripts/view_surface.py"
