# The embedded toy world: NSD's layout and formats at a laptop's scale, with planted truth.
# Defined only when nsd.root is the toy's, so that a missing file of a real NSD copy is never
# "made" with toy data.


if TOY:

    rule make_toy_nsd:
        output:
            expdesign=nsd_file(nsd_layout.expdesign_key()),
            captions=coco_file(nsd_layout.COCO_CAPTION_FILES[0]),
            other=toy_world_files(exclude_anchors=True),
        log:
            "logs/toy/make_toy_nsd.log",
        localrule: True
        conda:
            "../../envs/toy.yaml"
        params:
            toy=config["toy"],
        script:
            "../scripts/make_toy_nsd.py"
