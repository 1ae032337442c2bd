"""`ramparts audit`: the battery of checks against one model, a run folder, report.html and report.json."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ramparts.audit import (
    DEFAULT_BLACKBOX,
    DEFAULT_BLACKBOX_L2_EPS,
    DEFAULT_BLACKBOX_N,
    DEFAULT_CHECKS,
    DEFAULT_EPOCHS,
    DEFAULT_EPS_GRID,
    DEFAULT_MEMBERSHIP_SHADOWS,
    DEFAULT_N,
    DEFAULT_POISONING_FRACTIONS,
    DEFAULT_QUERY_BUDGETS,
    DEFAULT_REFERENCE_EPS,
    DEFAULT_THEFT,
    DEFAULT_THEFT_SEEDS,
    blackbox_names,
    check_names,
)
from ramparts.cli._common import (
    EXIT_GATE,
    DataOption,
    ModelOption,
    err,
    fail,
    load_splits,
    load_target,
    make_oracle,
    out,
    print_json,
    user_errors,
)
from ramparts.errors import invalid


def _fractions(spec: str) -> tuple[float, ...]:
    """--poisoning-fractions: "0.01,0.05" -> (0.01, 0.05); "none", "0" or "" -> () (no section)."""
    text = spec.strip().lower()
    if text in ("", "none", "0"):
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise invalid("--poisoning-fractions", spec, "a comma list of shares in (0, 0.5), or none") from exc


@user_errors
def audit_command(
    model: ModelOption = None,
    data: DataOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder (default: runs/audit-TIMESTAMP). A folder holding a run of the same "
            "configuration is resumed: what it measured is reused.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start afresh in --out even if it holds another run.")
    ] = False,
    attacks: Annotated[
        str,
        typer.Option(help=f"Comma-separated attacks, from: {', '.join(check_names())}."),
    ] = ",".join(DEFAULT_CHECKS),
    eps: Annotated[
        str,
        typer.Option(help="Comma-separated linf budgets: numbers, fractions (8/255) or pixel levels (5px)."),
    ] = ",".join(DEFAULT_EPS_GRID),
    reference_eps: Annotated[
        str, typer.Option(help="The eps of the summary line and of --fail-under (added to the grid).")
    ] = DEFAULT_REFERENCE_EPS,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Held-out test images to attack.")] = DEFAULT_N,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed for training, the sample choice and random starts.")
    ] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the default model (no --model).")] = (
        DEFAULT_EPOCHS
    ),
    fail_under: Annotated[
        float | None,
        typer.Option(
            help="Exit with code 1 when accuracy under attack at --reference-eps (worst case over "
            "the attacks) is below this fraction, e.g. 0.5: a gate for CI."
        ),
    ] = None,
    blackbox: Annotated[
        str,
        typer.Option(
            help="Black-box section: comma-separated score- or label-based attacks, from: "
            f"{', '.join(blackbox_names())}; 'none' to skip it."
        ),
    ] = ",".join(DEFAULT_BLACKBOX),
    query_budgets: Annotated[
        str, typer.Option(help="Comma-separated query budgets per image of the black-box section.")
    ] = ",".join(str(b) for b in DEFAULT_QUERY_BUDGETS),
    blackbox_n: Annotated[
        int, typer.Option(min=1, help="Images of the black-box section (the first of the audited ones).")
    ] = DEFAULT_BLACKBOX_N,
    blackbox_l2_eps: Annotated[
        str,
        typer.Option(help="L2 budget of the black-box section's L2 attacks (linf ones use --reference-eps)."),
    ] = DEFAULT_BLACKBOX_L2_EPS,
    theft: Annotated[
        str,
        typer.Option(
            help="Theft section: the label-only attack that copies the model (jacobian); 'none' to skip it."
        ),
    ] = DEFAULT_THEFT,
    theft_seeds: Annotated[
        int, typer.Option(min=1, help="Held-out test images the theft section's attacker starts from.")
    ] = DEFAULT_THEFT_SEEDS,
    membership_shadows: Annotated[
        int,
        typer.Option(
            min=0,
            help="Shadow models of the membership section (0 skips it; it runs when the training data is known).",
        ),
    ] = DEFAULT_MEMBERSHIP_SHADOWS,
    poisoning_fractions: Annotated[
        str,
        typer.Option(
            help="Poisoned shares of the training set for the poisoning section, e.g. 0.01,0.05 (none skips it).",
        ),
    ] = ",".join(f"{f:g}" for f in DEFAULT_POISONING_FRACTIONS),
    encryption: Annotated[
        bool,
        typer.Option(
            help="The encryption section: can the model run on CKKS-encrypted inputs, at what cost "
            "(--no-encryption skips it)."
        ),
    ] = True,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print report.json on stdout, nothing else.")
    ] = False,
) -> None:
    """Audit a model: evasion attacks over an eps grid, written to a run folder with report.html and report.json."""
    from ramparts.audit import RunFolderMismatchError, run_audit

    folder = out_dir or Path("runs") / f"audit-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    # Without --model, run_audit trains the default model itself (or reuses the one a resumed run saved).
    loaded = load_target(model, data, seed=seed, epochs=epochs, quiet=json_output) if model else None
    train_ds, test_ds = (loaded["train"], loaded["test"]) if loaded else (None, None)
    if loaded is None and data is not None:
        train_ds, test_ds = load_splits(data)
    try:
        report = run_audit(
            make_oracle(loaded["model"], loaded["test"]) if loaded else None,
            train_ds,
            test_ds,
            eps_grid=eps,
            attacks=attacks,
            n=n,
            seed=seed,
            reference_eps=reference_eps,
            out_dir=folder,
            progress=not json_output,
            model_info=loaded["info"] if loaded else None,
            epochs=epochs,
            fail_under=fail_under,
            overwrite=overwrite,
            blackbox=blackbox,
            query_budgets=query_budgets,
            blackbox_n=blackbox_n,
            blackbox_l2_eps=blackbox_l2_eps,
            theft=theft,
            theft_seeds=theft_seeds,
            membership_shadows=membership_shadows,
            poisoning_fractions=_fractions(poisoning_fractions),
            encryption=encryption,
        )
    except RunFolderMismatchError as exc:
        raise RunFolderMismatchError(
            exc.folder,
            exc.differences,
            param="--out",
            fix="pass another --out folder, or add --overwrite to start afresh in this one.",
        ) from None
    if json_output:
        print_json(report.to_dict())
    else:
        if report.resumed is not None:
            done = report.resumed
            err.print(
                f"[dim]Resumed {escape(str(folder))}: reused {done['measurements_reused']} of "
                f"{done['measurements']} measurements"
                f"{' and the trained model' if done['model_reused'] else ''}.[/]"
            )
        for line in report.headlines:
            out.print(f"[bold]*[/] {escape(line)}")
        out.print(
            f"Report: [bold]{escape(str(folder / 'report.html'))}[/] (and report.json) "
            f"in {report.timings['total_s']:.1f} s"
        )
    gate = report.gate
    if gate is not None and not gate["passed"]:
        acc = gate["robust_accuracy"]
        raise fail(
            f"--fail-under: accuracy under attack at eps={report.reference['eps_label']} is "
            f"{'n/a' if acc is None else f'{acc:.3f}'}, below the required {gate['fail_under']:.3f}.",
            EXIT_GATE,
        )
    if gate is not None and not json_output:
        err.print(f"[green]Gate passed:[/] {gate['robust_accuracy']:.3f} >= {gate['fail_under']:.3f}")
