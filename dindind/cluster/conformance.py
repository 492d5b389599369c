"""The [Conformance] run of ``cluster:e2e --conformance``: its skip list, its JUnit, its summary (pure).

The skip list is generated, never written by hand: the build's
``e2e-images.json`` names each conformance test whose source needs an image
dindind could not build (:mod:`dindind.build.e2eimages`); here those names
become one ginkgo ``--skip`` regex. After the run, the JUnit XML ginkgo wrote
is read back into passed / failed / skipped-for-image / skipped-other.
"""

import json
import xml.etree.ElementTree as ET

from dindind.base.errors import InputError

LABEL = "Conformance"               # ginkgo label of every framework.ConformanceIt
MAX_JUNIT_BYTES = 64 << 20
_SPECIAL = set("\\.+*?()|[]{}^$")
_PREFIXES = ("[It] ",)


def re2_escape(text):
    """``text`` as a literal in a Go (RE2) regular expression: only its metacharacters escaped."""
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def image_skips(doc):
    """{codename: [missing images]} from an e2e-images.json document."""
    return {t["codename"]: list(t["images"]) for t in (doc or {}).get("conformance", {}).get("skip_for_image", [])}


def skip_regex(codenames, extra=None):
    """One ``--skip`` regex: every codename as a literal, plus the user's own ``extra`` regex (None if empty)."""
    parts = [re2_escape(n) for n in sorted(codenames)] + ([extra] if extra else [])
    return "|".join(parts) or None


def _name(case):
    name = case.get("name") or ""
    for p in _PREFIXES:
        name = name.removeprefix(p)
    return name


def read_junit(paths):
    """[(test name, status)] from ginkgo JUnit files; status: passed, failed or skipped."""
    cases = []
    for path in paths:
        if path.stat().st_size > MAX_JUNIT_BYTES:
            raise InputError(f"{path} is larger than {MAX_JUNIT_BYTES >> 20} MiB: not a JUnit report of this run",
                             hint="remove it and run the tests again")
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise InputError(f"{path} is not valid JUnit XML: {exc}", hint="see e2e.log beside it") from None
        for case in root.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                status = "failed"
            elif case.find("skipped") is not None or case.get("status") in ("skipped", "pending"):
                status = "skipped"
            else:
                status = "passed"
            cases.append((_name(case), status))
    return cases


def summarize(cases, skipped_for_image, conformance_only=True):
    """Counts of a run: passed, failed, skipped_for_image, skipped_other, total; and the failed names.

    Suite-level nodes ([SynchronizedBeforeSuite] ...) are not tests; with
    ``conformance_only`` only tests named ``[Conformance]`` count (ginkgo
    reports every spec of the binary, the unfocused ones as skipped).
    """
    wanted = set(skipped_for_image)
    counts = {"passed": 0, "failed": 0, "skipped_for_image": 0, "skipped_other": 0}
    failed = []
    for name, status in cases:
        if name.startswith("[") and name.split("]", 1)[0][1:] in ("SynchronizedBeforeSuite", "SynchronizedAfterSuite",
                                                                   "BeforeSuite", "AfterSuite", "ReportAfterSuite",
                                                                   "ReportBeforeSuite", "DeferCleanup (Suite)"):
            continue
        if conformance_only and "[Conformance]" not in name:
            continue
        if status == "skipped":
            # ginkgo appends the spec's labels: "<codename> [Conformance, ...]"
            for_image = name in wanted or any(name.startswith(w + " [") for w in wanted)
            counts["skipped_for_image" if for_image else "skipped_other"] += 1
        else:
            counts[status] += 1
            if status == "failed":
                failed.append(name)
    counts["total"] = sum(counts.values())
    counts["ran"] = counts["passed"] + counts["failed"]
    return {**counts, "failed_tests": sorted(set(failed))}


def summary_text(s, seconds):
    return (f"conformance: {s['total']} tests, {s['ran']} ran, {s['passed']} passed, {s['failed']} failed, "
            f"{s['skipped_for_image']} skipped for a missing image, {s['skipped_other']} skipped otherwise "
            f"({seconds / 60:.1f} min)")


def write_summary(dest, s, seconds, images_doc):
    """summary.json beside the JUnit (the counts, failed tests, wall time, the images that were missing)."""
    from dindind.base import fsutil

    missing = [{"ref": i["ref"], "reason": i.get("reason")} for i in (images_doc or {}).get("images", [])
               if i.get("status") == "missing"]
    fsutil.write_text(dest / "summary.json", json.dumps({**s, "seconds": round(seconds, 1),
                                                         "missing_images": missing}, indent=2) + "\n")
