"""The run report: one self-contained page from metrics.json, covers and the fine-tuning log."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image

from icg_core import layout
from icg_core.evaluation.verdict import decide_verdict
from icg_core.report.page import fmt
from icg_core.stages.report import MetricsMissing, build_report
from icg_core.storage import ObjectStore

DS = "2026-11-15"
GENERATOR = "s2-a0.5-r1-p1-abc123"
NASTY_TITLE = '<script>alert("x")</script> & "Q"'
VARIANTS = ["reference", "selection", "base", "icg_no_preference", "icg_no_aesthetic", "icg"]
ORACLE_CTR_COLUMN = 6  # index of "Oracle CTR" among the ablation table's value cells


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", (size, size), color)
    image.paste(
        (255 - color[0], 255 - color[1], 255 - color[2]), (size // 4, size // 4, size // 2, size // 2)
    )
    image.save(buf, format="PNG")
    return buf.getvalue()


def variant_metrics(rank: int, *, oracle: bool = True) -> dict:
    """Metrics of one variant; ``rank`` orders the variants (higher = better on every metric)."""
    ctr = 0.05 + 0.01 * rank
    return {
        "aesthetic": 0.4 + 0.02 * rank,
        "aesthetic_ci": [0.38 + 0.02 * rank, 0.42 + 0.02 * rank],
        "aesthetic_heldout": 0.5 + 0.01 * rank,
        "relevance": 0.30 - 0.001 * rank,
        "category_top1": 0.6 + 0.01 * rank if oracle else None,
        "preference": 0.3 + 0.03 * rank,
        "oracle_ctr": ctr if oracle else None,
        "oracle_ctr_ci": [ctr - 0.004, ctr + 0.004] if oracle else None,
        "diversity": 0.01 * rank,
        "seconds_per_cover": 0.5 + 0.1 * rank,
        "n_covers": 96,
        "an_extra_key": "tolerated",
    }


def write_fixture_run(
    store: ObjectStore, ds: str = DS, *, segments: int = 3, items: int = 3, finetune: bool = True
) -> dict:
    """A metrics.json of every variant, tiny covers and a fine-tuning log under ``store``.

    Returns:
        The metrics written (its ``samples`` name every cover object).
    """
    variants = {name: variant_metrics(rank) for rank, name in enumerate(VARIANTS)}
    variants["selection"] = variant_metrics(1, oracle=False)  # nulls where the oracle is unavailable
    # the evaluate stage's shape: {metric: relative change, metric_ci}; vs base is left to the fallback
    variants["icg"]["uplift_vs_reference"] = {
        "oracle_ctr": 0.5,
        "oracle_ctr_ci": [0.4, 0.6],
        "preference": None,
    }
    for name in ("base", "icg"):
        variants[name]["oracle_ctr_by_segment"] = {str(s): 0.07 + 0.01 * s for s in range(segments)}
    samples = []
    for i in range(items):
        item, title = f"item_{i:05d}", NASTY_TITLE if i == 0 else f"Title {i}"
        key = f"raw/images/reference/{item}.png"
        store.put_bytes(key, png((40 * i % 255, 90, 160)))
        key = store.uri(key) if i == 1 else key  # references may be named by URI (reference_image_uri)
        samples.append(
            {"item_id": item, "title": title, "segment_id": None, "variant": "reference", "image_key": key}
        )
        for s in range(segments):
            for variant, shade in (("base", 60), ("icg", 200)):
                key = f"covers/ds={ds}/{variant}/segment={s}/{item}.png"
                store.put_bytes(key, png((shade, 50 * s % 255, 30 * i % 255)))
                samples.append(
                    {"item_id": item, "title": title, "segment_id": s, "variant": variant, "image_key": key}
                )
    metrics = {
        "ds": ds,
        "variants": variants,
        "preference_model": {
            "auc": 0.71,
            "oracle_auc": None,
            "log_loss": 0.52,
            "roc": {"fpr": [0.0, 0.1, 0.3, 0.6, 1.0], "tpr": [0.0, 0.35, 0.6, 0.85, 1.0]},
        },
        "segments": {
            "k": segments,
            "ari_vs_taste_groups": 0.42,
            "sizes": {str(s): 100 + 20 * s for s in range(segments)},
        },
        "downstream": {"auc_without_covers": 0.66, "auc_with_covers": 0.68, "n_eval": 5000},
        "gate": {
            "passed": True,
            "baseline_ds": "2026-11-14",
            "checks": [
                {
                    "name": "relevance_vs_base",
                    "passed": True,
                    "value": 0.01,
                    "threshold": 0.05,
                    "detail": "ok",
                }
            ],
        },  # fmt: skip
        "run": {
            "data_interval": {"start": "2026-11-01", "end": ds},
            "items": items,
            "item_ids": [f"item_{i:05d}" for i in range(items)],
            "model_versions": {"generator": GENERATOR, "rewards": "<b>2026-11-15</b>"},
            "timings": {"generate": 12.5, "score": {"aesthetic": 3.25}},
        },
        "samples": samples,
    }
    store.put_json(layout.metrics(ds), metrics)
    if finetune:
        curve = [
            {"step": step, "aesthetic_raw": 0.45 + 0.01 * k, "relevance_raw": 0.55 - 0.002 * k,
             "preference_raw": 0.30 + 0.02 * k, "reward": -1.0 + 0.2 * k}
            for k, step in enumerate(range(5, 30, 5))
        ]  # fmt: skip
        guard = [
            {"step": step, "relevance_raw": 0.34 + 0.01 * k, "aesthetic_raw": 0.5}
            for k, step in enumerate((0, 20))
        ]
        store.put_json(
            f"reports/ds={ds}/finetune-{GENERATOR}.json",
            {"ds": ds, "generator_version": GENERATOR, "latest_moved": True,
             "result": {"steps": 25, "complete": True, "curve": curve, "guard": guard}},
        )  # fmt: skip
    return metrics


@pytest.fixture
def store(tmp_path) -> ObjectStore:
    return ObjectStore(str(tmp_path))


def page_of(store: ObjectStore, ds: str = DS) -> str:
    key = build_report(store, ds)
    assert key == layout.report_page(ds)
    return store.get_bytes(key).decode("utf-8")


def row_cells(page: str, variant: str) -> list[str]:
    row = re.search(rf'<tr data-variant="{variant}">(.*?)</tr>', page, re.S)
    assert row, f"no ablation row for {variant}"
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)


def test_page_has_every_variant_row_and_run_metadata(store) -> None:
    write_fixture_run(store)
    page = page_of(store)
    assert page.startswith("<!DOCTYPE html>")
    for variant in VARIANTS:
        assert len(row_cells(page, variant)) == 10
    assert GENERATOR in page and "2026-11-01 to 2026-11-15" in page
    assert "score.aesthetic" in page  # nested timings are flattened
    assert "segment 2" in page and "140" in page  # segment sizes


def test_nulls_render_as_na(store) -> None:
    write_fixture_run(store)
    page = page_of(store)
    selection = row_cells(page, "selection")
    assert selection[ORACLE_CTR_COLUMN] == "n/a"  # no interval either: the CI was null
    assert "<th>Oracle AUC (ceiling)</th><td>n/a</td>" in page
    assert fmt(float("nan")) == "n/a" and fmt(None) == "n/a"


def test_best_value_per_column_is_highlighted(store) -> None:
    write_fixture_run(store)
    page = page_of(store)
    icg_row = re.search(r'<tr data-variant="icg">(.*?)</tr>', page, re.S).group(1)
    cells = re.findall(r"<td([^>]*)>", icg_row)
    assert 'class="best"' in cells[ORACLE_CTR_COLUMN]
    assert 'class="best"' not in cells[8]  # seconds per cover: lower is better, icg is the slowest
    reference_cells = re.findall(
        r"<td([^>]*)>", re.search(r'<tr data-variant="reference">(.*?)</tr>', page, re.S).group(1)
    )
    assert 'class="best"' in reference_cells[8]
    assert "[0.096, 0.104]" in page  # icg oracle CTR interval


def test_uplift_uses_stored_values_and_falls_back_to_ctr_ratio(store) -> None:
    write_fixture_run(store)
    page = page_of(store)
    assert "+50.0%" in page and "[+40.0%, +60.0%]" in page  # stored icg uplift vs reference
    # icg vs base computed from the oracle CTRs: 0.10 / 0.07 - 1
    assert f"{(0.10 / 0.07 - 1) * 100:+.1f}%" in page
    icg_uplift = re.findall(r"<td>(.*?)</td>", re.findall(r"<tr><th>ICG \(full\)</th>(.*?)</tr>", page)[-1])
    assert icg_uplift[2] == "n/a"  # preference vs reference: stored as null, so not recomputed
    assert icg_uplift[6] == "+25.0%"  # aesthetic vs reference: not stored, from the means 0.5 / 0.4


def test_strings_from_data_are_escaped(store) -> None:
    write_fixture_run(store)
    page = page_of(store)
    assert NASTY_TITLE not in page and "alert" in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;Q&quot;" in page
    assert "<b>2026" not in page and "&lt;b&gt;2026-11-15&lt;/b&gt;" in page


def test_covers_and_plots_are_embedded_not_linked(store) -> None:
    metrics = write_fixture_run(store, segments=3, items=3)
    page = page_of(store)
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    covers = [s for s in sources if s.startswith("data:image/jpeg;base64,")]
    plots = [s for s in sources if s.startswith("data:image/png;base64,")]
    assert len(covers) == 3 * 3 * 3  # segments x items x (reference, base, icg)
    assert len(plots) == 2  # ROC + reward curves
    assert len(sources) == len(covers) + len(plots)
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]{0,8})', page))
    first = Image.open(io.BytesIO(base64.b64decode(covers[0].split(",", 1)[1])))
    assert first.format == "JPEG" and first.size == (32, 32)
    assert len(metrics["samples"]) == 3 + 3 * 3 * 2  # the shared reference fills every segment's sheet


def test_unreadable_cover_is_a_visible_cell_not_a_failure(store) -> None:
    metrics = write_fixture_run(store)
    broken = metrics["samples"][1]["image_key"]
    store.put_bytes(broken, b"not an image")
    store.delete(metrics["samples"][2]["image_key"])
    page = page_of(store)
    assert page.count("image missing") == 2
    assert "2 sampled cover(s) could not be read." in page


def test_reward_curves_fall_back_to_the_newest_log_or_say_none(store) -> None:
    write_fixture_run(store, finetune=False)
    store.put_json("reports/bootstrap/finetune-not-a-run-log.json", {"generator_version": "not-a-run-log"})
    assert "No fine-tuning this run." in page_of(store)
    store.put_json(
        "reports/ds=2026-11-14/finetune-s2-older.json",
        {"ds": "2026-11-14", "generator_version": "s2-older", "latest_moved": True,
         "result": {"steps": 5, "complete": True, "curve": [{"step": 5, "reward": 0.1, "aesthetic_raw": 0.4}]}},
    )  # fmt: skip
    page = page_of(store)
    assert "s2-older" in page and "showing the newest" in page
    assert page.count('alt="reward curves"') == 1


def test_missing_metrics_is_a_clear_refusal(store) -> None:
    with pytest.raises(MetricsMissing, match=r"no metrics for ds=2026-11-15: .*metrics.json is missing"):
        build_report(store, DS)
    assert not store.exists(layout.report_page(DS))


def test_minimal_metrics_render(store) -> None:
    """Only the ds and one variant: every section still renders, with n/a and notes."""
    store.put_json(
        layout.metrics(DS), {"ds": DS, "variants": {"icg": {"aesthetic": 0.5}}, "future_key": [1, 2]}
    )
    page = page_of(store)
    assert len(row_cells(page, "icg")) == 10
    assert (
        "No sampled covers." in page
        and "No ROC curve recorded." in page
        and "No fine-tuning this run." in page
    )


def test_a_run_without_an_oracle_says_what_it_did_not_measure_and_why(store) -> None:
    from icg_core.evaluation.measures import NOT_MEASURED_WITHOUT_ORACLE

    metrics = {"ds": DS, "variants": {"icg": {"aesthetic": 0.5, "oracle_ctr": None}}}
    store.put_json(layout.metrics(DS), {**metrics, "not_measured": NOT_MEASURED_WITHOUT_ORACLE})
    page = page_of(store)
    assert "Not measured on this data" in page
    assert all(f"<code>{name}</code>" in page for name in NOT_MEASURED_WITHOUT_ORACLE)
    assert "an online A/B test" in page
    store.put_json(layout.metrics(DS), {**metrics, "not_measured": {}})  # the embedded world: no such section
    assert "Not measured on this data" not in page_of(store)


def test_evaluate_stage_extras_are_shown(store) -> None:
    """Gate, per-segment oracle CTR, failed ablations and extra scalar keys reach the page."""
    metrics = write_fixture_run(store)
    assert "Quality gate passed against the published run of 2026-11-14." in page_of(store)
    metrics["gate"] = {"passed": False, "baseline_ds": None, "checks": [
        {"name": "regression:oracle_ctr", "passed": False, "value": 0.08, "threshold": 0.05, "detail": "<fell>"}]}  # fmt: skip
    metrics["variants"]["icg_no_aesthetic"] = {"aesthetic": None, "failure": "relevance <collapsed>"}
    store.put_json(layout.metrics(DS), metrics)
    page = page_of(store)
    assert "Quality gate FAILED." in page and "&lt;fell&gt;" in page and "+8.0%" in page
    assert "failed: relevance &lt;collapsed&gt;" in page
    assert row_cells(page, "icg_no_aesthetic")[ORACLE_CTR_COLUMN] == "n/a"
    assert "oracle CTR: base 0.090, ICG 0.090" in page  # segment 2's sheet heading
    assert "<th>n_eval</th><td>5,000</td>" in page and "<th>items</th><td>3</td>" in page
    assert "item_00002, " not in page  # run.item_ids is a list: not dumped into the page


def test_older_shapes_still_read(store) -> None:
    """A [start, end] data interval and a bare-number uplift with its own _ci key."""
    metrics = write_fixture_run(store)
    metrics["run"]["data_interval"] = ["2026-10-01", "2026-10-15"]
    metrics["variants"]["icg"]["uplift_vs_reference"] = 0.25
    metrics["variants"]["icg"]["uplift_vs_reference_ci"] = [0.2, 0.3]
    store.put_json(layout.metrics(DS), metrics)
    page = page_of(store)
    assert "2026-10-01 to 2026-10-15" in page and "+25.0%" in page and "[+20.0%, +30.0%]" in page


def _verdict(page: str) -> str:
    found = re.search(r'<p class="verdict[^"]*" data-verdict="([^"]+)">(.*?)</p>', page, re.S)
    assert found, "no verdict line"
    return found.group(1)


def test_the_verdict_names_the_best_baseline_and_reads_the_intervals(store) -> None:
    metrics = write_fixture_run(store)
    variants = metrics["variants"]
    variants["selection"] = variant_metrics(3)  # the best baseline: 0.08 [0.076, 0.084]
    variants["icg"]["oracle_ctr"], variants["icg"]["oracle_ctr_ci"] = 0.10, [0.09, 0.11]
    variants["oracle_best"] = variant_metrics(9)

    def page_with_verdict() -> str:
        metrics["verdict"] = decide_verdict(variants, 0.9)
        store.put_json(layout.metrics(DS), metrics)
        return page_of(store)

    page = page_with_verdict()
    assert _verdict(page) == "ICG wins"
    assert page.index('class="verdict') < page.index("<h2>Ablation</h2>")  # the report opens with it
    assert "best-variant selection" in page and "The world's own best cover reaches 0.14" in page

    variants["icg"]["oracle_ctr_ci"] = [0.079, 0.11]  # overlaps selection's interval
    assert _verdict(page_with_verdict()) == "no clear winner"
    variants["icg"]["oracle_ctr"], variants["icg"]["oracle_ctr_ci"] = 0.06, [0.05, 0.07]
    assert _verdict(page_with_verdict()) == "ICG loses"


def test_on_real_data_the_verdict_says_not_shown_and_why(store) -> None:
    """No oracle: however far the preference score is above, the page claims no win."""
    metrics = write_fixture_run(store)
    for variant in metrics["variants"].values():
        variant["oracle_ctr"] = variant["oracle_ctr_ci"] = None
    metrics["variants"]["icg"]["preference"] = 0.99
    metrics["verdict"] = decide_verdict(metrics["variants"], 0.9)
    store.put_json(layout.metrics(DS), metrics)
    page = page_of(store)
    assert _verdict(page) == "not shown" and "wins" not in page and "optimized for" in page


def test_per_segment_table_labels_tastes_and_highlights_the_best(store) -> None:
    metrics = write_fixture_run(store)
    metrics["segments"]["taste"] = {
        "0": {"warmth": 0.8, "brightness": -0.5, "saturation": 0.1, "contrast": 0.0}
    }
    metrics["variants"]["selection"]["oracle_ctr_by_segment"] = {"0": 0.5, "1": 0.01, "2": 0.01}
    store.put_json(layout.metrics(DS), metrics)
    page = page_of(store)
    section = page[page.index("<h2>Per segment</h2>") :]
    section = section[: section.index("</section>")]
    assert "warm, dark" in section  # strongest first; weak tastes (|t| < 0.2) are not named
    row = re.search(r"<tr><th>segment 0.*?</tr>", section, re.S).group(0)
    assert '<td class="best">0.500</td>' in row


def test_the_snapshot_curve_is_plotted_when_the_evaluation_measured_it(store) -> None:
    metrics = write_fixture_run(store)
    assert "learned reward vs oracle CTR" not in page_of(store)
    metrics["finetune_curve"] = [
        {"step": step, "preference": 0.3 + 0.05 * k, "oracle_ctr": 0.3 + 0.02 * k}
        for k, step in enumerate((0, 20, 40, 60))
    ]
    store.put_json(layout.metrics(DS), metrics)
    assert 'alt="learned reward vs oracle CTR across snapshots"' in page_of(store)
