"""The external dataset registry: the DataComp 38 and the CLIP paper's datasets, each fully specified."""

from __future__ import annotations

import pytest

from evaluation import registry, templates


def test_suites_hold_datacomps_38_and_the_clip_papers_zero_shot_datasets():
    assert len(registry.REGISTRY) >= 38
    datacomp = registry.suite("datacomp")
    assert len(datacomp) == 38
    assert len({d.datacomp for d in datacomp}) == 38 and all(d.datacomp for d in datacomp)
    clip = {d.name for d in registry.suite("clip")}
    for name in ("birdsnap", "fer2013", "ucf101", "kinetics700", "hateful_memes", "imagenet1k", "cifar10",
                 "country211", "renderedsst2", "kitti_closest_vehicle_distance", "pcam", "clevr_count_all"):
        assert name in clip
    for name in ("cifar10", "imagenet1k", "mscoco_captions", "flickr30k", "fgvc_aircraft", "cars", "imagenetv2"):
        assert name in registry.REGISTRY  # CLIP_benchmark's names
    with pytest.raises(KeyError, match="unknown suite"):
        registry.suite("vtab")
    with pytest.raises(KeyError, match="unknown external dataset 'cifar11'"):
        registry.get("cifar11")


@pytest.mark.parametrize("spec", registry.suite("all"), ids=lambda d: d.name)
def test_every_entry_is_complete(spec):
    assert spec.task in registry.TASKS
    assert spec.main_metric in registry.METRICS[spec.task]
    assert spec.group and spec.title and spec.suites
    if spec.task == registry.CLASSIFICATION:
        assert spec.templates and all("{c}" in t for t in spec.templates)
        assert len(set(spec.templates)) == len(spec.templates)
        assert spec.num_classes and spec.num_classes >= 2
        if spec.classnames is None:
            assert spec.classnames_doc.startswith("classnames.txt:")
        else:
            assert len(spec.classnames) == spec.num_classes
    if "group" in spec.main_metric:
        assert spec.group_by


def test_main_metrics_follow_datacomp():
    main = {d.name: d.main_metric for d in registry.suite("all")}
    for name in ("caltech101", "fgvc_aircraft", "flowers", "pets"):
        assert main[name] == "mean_per_class_recall"
    assert main["flickr30k"] == main["mscoco_captions"] == "mean_R@1"
    assert main["fmow"] == main["geode"] == "worst_group_top1"
    assert main["dollar_street"] == "worst_group_top5"
    assert main["iwildcam"] == "macro_f1" and main["winogavil"] == "jaccard_10-12"
    assert main["cifar10"] == main["imagenet1k"] == "top1"


def test_the_clip_papers_template_sets():
    assert len(templates.IMAGENET) == len(set(templates.IMAGENET)) == 80
    variants = [d for d in registry.suite("all") if d.group == "imagenet-robustness"]
    assert len(variants) == 7 and all(d.templates == templates.IMAGENET for d in variants)
    assert len(set(templates.CIFAR)) == 18 and registry.get("cifar100").templates == templates.CIFAR
    assert len(set(templates.CALTECH)) == 34
    assert len(set(templates.UCF101)) == 48 and "a video of a person practicing {c}." in templates.UCF101
    assert len(set(templates.KINETICS)) == 28
    assert len(set(templates.RESISC45)) == 18
    assert registry.get("kitti_closest_vehicle_distance").templates == ("{c}",)
