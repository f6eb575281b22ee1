"""The tables ``kronos bench forecast`` and ``kronos bench calibration`` print."""

from __future__ import annotations

from rich.table import Table

from kronos.cli._common import out, table


def p_value(value: float | None) -> str:
    """A p-value with 3 decimals ('' where there is no test)."""
    return "" if value is None else f"{value:.3f}"


def ratio(value: float | None) -> str:
    """A CRPS ratio with 3 decimals ('' where there is none)."""
    return "" if value is None else f"{value:.3f}"


def significance_cells(r: dict) -> list[str]:
    """DM p-values vs EWMA and GARCH, the MCS p-value and membership."""
    return [
        p_value(r["dm_pvalue_vs_ewma"]),
        p_value(r["dm_pvalue_vs_garch"]),
        p_value(r["mcs_pvalue"]),
        "yes" if r["in_mcs"] else "no",
    ]


SIGNIFICANCE_COLUMNS = ["DM p vs EWMA", "DM p vs GARCH", "MCS p", "in MCS 90%"]


def print_holdouts(result: dict) -> None:
    """One table per holdout year and one for the pooled aggregate."""
    columns = ["model", "MAE", "coverage", "CRPS", "CRPS/GARCH", "CRPS/EWMA"]
    for h in result["holdouts"]:
        year = str(h["year"])
        rows = [
            [
                r["model"],
                f"{r['holdouts'][year]['mae']:.5f}",
                f"{r['holdouts'][year]['coverage']:.1%}",
                f"{r['holdouts'][year]['crps']:.6f}",
                ratio(r["holdouts"][year]["crps_ratio_garch"]),
                ratio(r["holdouts"][year]["crps_ratio_ewma"]),
                *significance_cells(r["holdouts"][year]),
            ]
            for r in result["models"]
        ]
        title = (
            f"holdout {year}: {len(result['symbols'])} symbols, {h['origins']} origins "
            f"{h['first_origin']}..{h['last_origin']}, fitted through {h['train_end']}"
        )
        out.print(table(title, columns + SIGNIFICANCE_COLUMNS, rows))
    rows = [
        [
            r["model"],
            f"{r['aggregate']['coverage']:.1%}",
            f"{r['aggregate']['crps']:.6f}",
            ratio(r["aggregate"]["crps_ratio_garch"]),
            ratio(r["aggregate"]["crps_ratio_ewma"]),
            ratio(r["aggregate"]["mean_crps_ratio_garch"]),
            ratio(r["aggregate"]["mean_crps_ratio_ewma"]),
            *significance_cells(r["aggregate"]),
        ]
        for r in result["models"]
    ]
    years = ",".join(str(h["year"]) for h in result["holdouts"])
    out.print(
        table(
            f"aggregate {years}: per-origin losses pooled over "
            f"{sum(h['origins'] for h in result['holdouts'])} origins",
            [
                "model",
                "coverage",
                "CRPS (pooled)",
                "CRPS/GARCH",
                "CRPS/EWMA",
                "mean CRPS/GARCH",
                "mean CRPS/EWMA",
                *SIGNIFICANCE_COLUMNS,
            ],
            rows,
        )
    )
    print_weights(result)


def print_weights(result: dict) -> None:
    """The combination weights each holdout's validation year chose (per level, per member)."""
    for r in result["models"]:
        for year, held in r["holdouts"].items():
            weights = held.get("fitted", {}).get("weights")
            if not weights:
                continue
            text = "; ".join(
                f"{level} " + ", ".join(f"{m} {w:.2f}" for m, w in by_member.items())
                for level, by_member in weights.items()
            )
            out.print(f"{r['model']} {year} weights (fitted on the year before): {text}")


def conditional_table(result: dict) -> Table:
    """Coverage by volatility tercile and the step-1 VaR tests' p-values, raw and calibrated."""
    from kronos.bench.calibration_quality import VOL_LAMBDA, headline

    rows = []
    for r in result["models"]:
        h = headline(r)
        for label in ("raw", "calibrated"):
            rows.append(
                [
                    r["model"] if label == "raw" else "",
                    label,
                    *(f"{h[f'{label}_cov_{t}']:.1%}" for t in ("low", "mid", "high")),
                    *(
                        f"{h[f'{label}_{q}_{test}_p']:.3f}"
                        for q in ("p05", "p95")
                        for test in ("kupiec", "cc")
                    ),
                    f"{r['conditional']['crossed_rows']:,}" if label == "raw" else "",
                ]
            )
    return table(
        f"conditional calibration on the holdout: coverage by tercile of the EWMA volatility "
        f"(lambda {VOL_LAMBDA:g}) at the origin; p-values of Kupiec (rate) and Christoffersen "
        "(conditional coverage) on the step-1 exceedances",
        [
            "model",
            "forecast",
            "cov low vol",
            "cov mid vol",
            "cov high vol",
            "p05 Kupiec p",
            "p05 CC p",
            "p95 Kupiec p",
            "p95 CC p",
            "crossed rows",
        ],
        rows,
        left=2,
    )


def print_calibration(result: dict, dynamic: bool) -> None:
    """The calibration bench's tables: raw vs calibrated, conditional, fixed vs dynamic lambda."""
    from kronos.bench.calibration import DYNAMIC_VARIANTS

    rows = [
        [
            r["model"],
            f"{r['raw_coverage']:.1%}",
            f"{r['calibrated_coverage']:.1%}",
            f"{r['raw_crps']:.6f}",
            f"{r['calibrated_crps']:.6f}",
            f"{r['crps_change']:+.2%}",
            f"{r['final_mean_scale']:.3f}",
            ("[green]yes[/]" if r["coverage_target_met"] else "[red]no[/]")
            if r["coverage_target_applies"]
            else "n/a",
        ]
        for r in result["models"]
    ]
    out.print(
        table(
            f"calibration on the holdout {result['holdout_start']}..{result['end']} "
            f"(warm-up from {result['warmup_start']})",
            [
                "model",
                "raw cov",
                "calibrated cov",
                "raw CRPS",
                "calibrated CRPS",
                "CRPS change",
                "final scale",
                "90+/-2%",
            ],
            rows,
        )
    )
    out.print(conditional_table(result))
    if dynamic:
        regime = result["regime"]
        compare = []
        for r in result["models"]:
            compare.append(
                [
                    r["model"],
                    "fixed",
                    f"{r['calibrated_coverage']:.1%}",
                    f"{r['calibrated_crps']:.6f}",
                    "",
                    f"{r['final_mean_scale']:.3f}",
                ]
            )
            for variant in DYNAMIC_VARIANTS:
                v = r["dynamic"][variant]
                compare.append(
                    [
                        "",
                        variant.replace("_", " "),
                        f"{v['coverage']:.1%}",
                        f"{v['crps']:.6f}",
                        f"{v['crps_vs_fixed']:+.2%}",
                        f"{v['final_mean_scale']:.3f}",
                    ]
                )
        out.print(
            table(
                f"fixed vs dynamic lambda (lambda {result['settings']['calibration_lambda']:g} "
                f"-> {regime['lambda_turbulent']:g} with p_turbulent; mean lambda on the holdout "
                f"{regime['holdout']['mean_lambda']:.4f})",
                ["model", "calibrator", "coverage", "CRPS", "vs fixed", "final scale"],
                compare,
                left=2,
            )
        )
        val = regime["validation"]
        out.print(
            f"regime encoder {regime['version']} trained until {regime['trained_until']}: "
            f"validation log loss {val.get('valid_log_loss', float('nan')):.4f} vs persistence "
            f"{val.get('baseline_log_loss', float('nan')):.4f}",
            highlight=False,
        )
