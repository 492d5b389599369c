"""The e2e image set: which images are built, which are missing and why, which conformance tests need what."""

from pathlib import Path

from dindind.base import config
from dindind.base.layout import Layout
from dindind.build import e2eimages
from dindind.tasks import build as build_tasks

E2E = "registry.k8s.io/e2e-test-images/"
LISTED = f"""\
{E2E}agnhost:2.66.1
{E2E}agnhost:2.55
{E2E}busybox:1.37.0-2
{E2E}nginx:1.28.0-2
{E2E}sample-apiserver:1.29.2
{E2E}perl:5.26
registry.k8s.io/pause:3.10.2
registry.k8s.io/sig-storage/csi-attacher:v4.12.0
registry.k8s.io/sig-storage/nfs-provisioner:v4.0.8
{E2E}node-perf/npb-ep:1.6.0
invalid.registry.k8s.io/invalid/alpine:3.1

"""


def by_ref(images):
    return {i["ref"]: i for i in images}


def test_every_listed_image_is_built_preloaded_unpullable_or_missing_with_a_reason():
    refs = e2eimages.parse_image_list(LISTED)
    images = by_ref(e2eimages.classify(refs, {"registry.k8s.io/pause:3.10.2"}, {"agnhost": "2.66.1"}))
    assert len(images) == 11
    assert images[f"{E2E}agnhost:2.66.1"]["status"] == "built"
    assert images[f"{E2E}agnhost:2.66.1"]["name"] == "agnhost-2.66.1"
    assert "alias_of" not in images[f"{E2E}agnhost:2.66.1"]
    assert images[f"{E2E}agnhost:2.55"]["alias_of"] == f"{E2E}agnhost:2.66.1"
    assert images[f"{E2E}busybox:1.37.0-2"]["recipe"] == "busybox"
    assert images[f"{E2E}nginx:1.28.0-2"]["recipe"] == "nginx"
    assert images["registry.k8s.io/pause:3.10.2"]["status"] == "preloaded"
    assert images["invalid.registry.k8s.io/invalid/alpine:3.1"]["status"] == "unpullable"
    # the aggregator's sample-apiserver (a staging module) and perl (Debian's) are built too
    assert images[f"{E2E}sample-apiserver:1.29.2"]["recipe"] == "sample-apiserver"
    assert images[f"{E2E}perl:5.26"]["recipe"] == "perl"
    for ref in ("registry.k8s.io/sig-storage/csi-attacher:v4.12.0", f"{E2E}node-perf/npb-ep:1.6.0"):
        assert images[ref]["status"] == "missing" and images[ref]["reason"], ref
    assert "CSI" in images["registry.k8s.io/sig-storage/csi-attacher:v4.12.0"]["reason"]
    assert "benchmark" in images[f"{E2E}node-perf/npb-ep:1.6.0"]["reason"]


def test_every_go_image_recipe_has_its_binaries_and_dockerfile():
    for recipe, binaries in e2eimages.GO_BINARIES.items():
        assert recipe in e2eimages.DOCKERFILES and binaries, recipe
        for binary, pkg in binaries.items():
            assert binary.startswith("e2e-") and (pkg.startswith("k8s:test/images/") or pkg.startswith("k8s.io/"))
    assert set(e2eimages.RECIPES.values()) <= set(e2eimages.DOCKERFILES)


MANIFEST = """
	configs[Agnhost] = Config{list.PromoterE2eRegistry, "agnhost", "2.66.1"}
	configs[APIServer] = Config{list.PromoterE2eRegistry, "sample-apiserver", "1.29.2"}
	configs[BusyBox] = Config{list.PromoterE2eRegistry, "busybox", "1.37.0-2"}
	configs[Pause] = Config{list.GcRegistry, "pause", "3.10.2"}
	configs[NFSProvisioner] = Config{list.SigStorageRegistry, "nfs-provisioner", "v4.0.8"}
"""

AGGREGATOR_GO = '''
var _ = SIGDescribe("Aggregator", func() {
	framework.ConformanceIt("Should be able to support the 1.17 Sample API Server (using it)", func(ctx context.Context) {
		TestSampleAPIServer(ctx, f, aggrclient, imageutils.GetE2EImage(imageutils.NFSProvisioner))
	})
	framework.ConformanceIt("should list the APIServices", func(ctx context.Context) {
		_ = "imageutils.NFSProvisioner is only in a string here"
	})
	framework.ConformanceIt("should run a helper's pod", func(ctx context.Context) {
		deployHelper(ctx) // helpers of the same file count, transitively
	})
})

func deployHelper(ctx context.Context) {
	deeper()
}

func deeper() {
	_ = imageutils.GetE2EImage(imageutils.NFSProvisioner)
}
'''


def test_the_skip_list_names_the_conformance_tests_whose_source_needs_a_missing_image():
    refs = e2eimages.parse_image_list(LISTED)
    consts = e2eimages.image_constants(MANIFEST, refs)
    assert consts["APIServer"] == f"{E2E}sample-apiserver:1.29.2"
    assert consts["GetPauseImageName"] == "registry.k8s.io/pause:3.10.2"
    tests = [{"codename": f"[sig-api-machinery] Aggregator {t} [Conformance]", "file": "test/e2e/aggregator.go"}
             for t in ("Should be able to support the 1.17 Sample API Server (using it)",
                       "should list the APIServices", "should run a helper's pod")]
    needs = e2eimages.conformance_needs(tests, {"test/e2e/aggregator.go": AGGREGATOR_GO}, consts)
    assert sorted(needs) == sorted([tests[0]["codename"], tests[2]["codename"]])
    images = e2eimages.classify(refs, set(), {"agnhost": "2.66.1"})
    doc = e2eimages.summary(images, tests, needs)
    assert doc["conformance"]["total"] == 3
    assert [t["codename"] for t in doc["conformance"]["skip_for_image"]] == sorted(
        [tests[0]["codename"], tests[2]["codename"]])
    assert doc["conformance"]["skip_for_image"][0]["images"] == ["registry.k8s.io/sig-storage/nfs-provisioner:v4.0.8"]
    assert doc["counts"]["missing"] == 4 and doc["counts"]["unpullable"] == 1     # pause: not preloaded here


def test_a_test_needing_only_built_images_is_not_skipped():
    refs = e2eimages.parse_image_list(LISTED)
    consts = e2eimages.image_constants(MANIFEST, refs)
    go = ('framework.ConformanceIt("runs busybox", func(ctx context.Context) {\n'
          '\t_ = imageutils.GetE2EImage(imageutils.BusyBox)\n})\n')
    tests = [{"codename": "[sig-node] X runs busybox [Conformance]", "file": "x.go"}]
    needs = e2eimages.conformance_needs(tests, {"x.go": go}, consts)
    assert needs == {tests[0]["codename"]: [f"{E2E}busybox:1.37.0-2"]}
    doc = e2eimages.summary(e2eimages.classify(refs, set(), {}), tests, needs)
    assert doc["conformance"]["skip_for_image"] == []


def test_e2e_images_are_on_by_default_for_go_builds_only():
    assert config.e2e_images(config.parse("kubernetes: {source: module, version: v1.37.2}\n", "x.yaml"))
    assert not config.e2e_images(config.parse("kubernetes: {source: sample}\n", "x.yaml"))
    assert not config.e2e_images(config.parse("kubernetes: {source: module, version: v1.37.2}\n"
                                              "node: {e2e_images: false}\n", "x.yaml"))


def _task_names(tmp_path, text):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return {t["name"]: t for t in build_tasks._build_tasks(cfg, tmp_path)}


def test_the_node_image_depends_on_the_e2e_images_only_when_they_are_on(tmp_path):
    lay = Layout(Path(tmp_path))
    tasks = _task_names(tmp_path, "kubernetes: {source: module, version: v1.37.2}\n")
    assert lay.e2e_images_json() in tasks["e2e-images"]["targets"]
    assert lay.e2e_images_json() in tasks["node"]["file_dep"]
    tasks = _task_names(tmp_path, "kubernetes: {source: module, version: v1.37.2}\nnode: {e2e_images: false}\n")
    assert "e2e-images" not in tasks
    assert lay.e2e_images_json() not in tasks["node"]["file_dep"]


def test_the_node_preloads_one_archive_of_the_built_images_or_none(tmp_path):
    lay = Layout(Path(tmp_path))
    lay.e2e_images.mkdir(parents=True)
    lay.e2e_images_json().write_text(
        '{"images": [{"ref": "a", "status": "built", "name": "agnhost-2.66.1"},'
        ' {"ref": "b", "status": "missing", "reason": "r"}]}')
    assert e2eimages.tarballs(lay) == {"e2e-images": lay.e2e_images / "e2e-images.tar"}
    lay.e2e_images_json().write_text('{"images": [{"ref": "b", "status": "missing", "reason": "r"}]}')
    assert e2eimages.tarballs(lay) == {}


def test_an_edited_image_recipe_makes_the_e2e_images_task_run_again(tmp_path, monkeypatch):
    text = "kubernetes: {source: module, version: v1.37.2}\n"
    before = _task_names(tmp_path, text)["e2e-images"]["uptodate"][0]._calc_digest()
    monkeypatch.setitem(e2eimages.DOCKERFILES, "busybox", e2eimages.DOCKERFILES["busybox"] + "# edited\n")
    assert _task_names(tmp_path, text)["e2e-images"]["uptodate"][0]._calc_digest() != before
