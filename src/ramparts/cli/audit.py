"""`ramparts audit`: the battery of checks against one model, a run folder, report.html and report.json.

Every knob comes from a profile (`--profile`, default quick), a TOML file (`--config`) and the flags given;
a flag wins over the file, the file over the profile (`ramparts.audit.profiles`). `--fail-under` takes gate
clauses (`ramparts.audit.gate`), evaluated on the finished report and written into report.json's `gate`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ramparts.audit import blackbox_names, check_names
from ramparts.audit.profiles import PROFILES
from ramparts.cli._common import (
    EXIT_GATE,
    AuditModelOption,
    DataOption,
    OracleConfigOption,
    err,
    load_audit_target,
    load_splits,
    out,
    print_json,
    user_errors,
)

FROM_PROFILE = "Default: from the profile (or --config)."
# Command options -> `ramparts.audit.profiles.KNOBS` keys, where the names differ.
_KNOB_OF = {"eps": "eps_grid", "out_dir": "out"}


@user_errors
def audit_command(
    model: AuditModelOption = None,
    data: DataOption = None,
    oracle_config: OracleConfigOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder (default: runs/audit-TIMESTAMP). A folder holding a run of the same "
            "configuration is resumed: what it measured is reused.",
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help=f"Budgets: {', '.join(PROFILES)} (default quick, or the config file's `profile`). "
            "quick: the digits in ~2 minutes; standard: the MNIST CNN on 2 CPU cores; thorough: a GPU."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file setting any knob (keys: run_audit's keywords, profile, attack_params, fail_under, "
            "model, data, out). Flags given on the command line win over it."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start afresh in --out even if it holds another run.")
    ] = False,
    attacks: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated attacks, from: {', '.join(check_names())}. {FROM_PROFILE}"),
    ] = None,
    eps: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated linf budgets: numbers, fractions (8/255) or pixel levels (5px). "
            + FROM_PROFILE
        ),
    ] = None,
    reference_eps: Annotated[
        str | None,
        typer.Option(help="The eps of the summary line and of the numeric --fail-under (added to the grid)."),
    ] = None,
    n: Annotated[int | None, typer.Option("--n", "-n", min=1, help="Held-out test images to attack.")] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, help="Seed for training, the sample choice and random starts (0).")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Training epochs of the default model, shadows and poisoned retrains."),
    ] = None,
    fail_under: Annotated[
        list[str] | None,
        typer.Option(
            help="A CI gate, repeatable or comma-separated: exit 1 when a clause fails, e.g. "
            "robust_accuracy@linf:8/255=0.4, mia_tpr@0.001<=0.02, clean_accuracy>=0.9, theft_fidelity<=0.8, "
            "backdoor_success<=0.5, encrypted_agreement>=0.99; a bare number (0.5) gates accuracy under "
            "attack at --reference-eps. Grammar and metrics: ramparts.audit.gate."
        ),
    ] = None,
    blackbox: Annotated[
        str | None,
        typer.Option(
            help="Black-box section: comma-separated score- or label-based attacks, from: "
            f"{', '.join(blackbox_names())}; 'none' to skip it."
        ),
    ] = None,
    query_budgets: Annotated[
        str | None, typer.Option(help="Comma-separated query budgets per image of the black-box section.")
    ] = None,
    blackbox_n: Annotated[
        int | None,
        typer.Option(min=1, help="Images of the black-box section (the first of the audited ones)."),
    ] = None,
    blackbox_l2_eps: Annotated[
        str | None,
        typer.Option(help="L2 budget of the black-box section's L2 attacks (linf ones use --reference-eps)."),
    ] = None,
    theft: Annotated[
        str | None,
        typer.Option(
            help="Theft section: the label-only attack that copies the model (jacobian); 'none' to skip it."
        ),
    ] = None,
    theft_seeds: Annotated[
        int | None, typer.Option(min=1, help="Held-out test images the theft section's attacker starts from.")
    ] = None,
    membership_shadows: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Shadow models of the membership section (0 skips it; it runs when the training data is known).",
        ),
    ] = None,
    poisoning_fractions: Annotated[
        str | None,
        typer.Option(
            help="Poisoned shares of the training set for the poisoning section, e.g. 0.01,0.05 (none skips it).",
        ),
    ] = None,
    poisoning_records: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Training records the poisoning section retrains on, drawn with the seed (0: all of them).",
        ),
    ] = None,
    encryption: Annotated[
        bool | None,
        typer.Option(
            "--encryption/--no-encryption",
            help="The encryption section: can the model run on CKKS-encrypted inputs, at what cost.",
            show_default=False,
        ),
    ] = None,
    encryption_queries: Annotated[
        int | None, typer.Option(min=1, help="Single encrypted queries timed by the encryption section.")
    ] = None,
    defense_steps: Annotated[
        int | None,
        typer.Option(
            min=0, help="Steps of the adaptive attack on a defended model (0 skips the defence section)."
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="What membership and poisoning retrain: auto, default or a zoo architecture (auto)."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print report.json on stdout, nothing else.")
    ] = False,
) -> None:
    """Audit a model: every threat section, written to a run folder with report.html and report.json."""
    from ramparts.audit import RunFolderMismatchError, run_audit
    from ramparts.audit.gate import check_settings, evaluate_gate, numeric_bound, parse_gate
    from ramparts.audit.profiles import resolve_settings
    from ramparts.report.html import write_html
    from ramparts.report.json import write_json

    given = {
        "model": model,
        "data": data,
        "out_dir": None if out_dir is None else str(out_dir),
        "attacks": attacks,
        "eps": eps,
        "reference_eps": reference_eps,
        "n": n,
        "seed": seed,
        "epochs": epochs,
        "fail_under": fail_under or None,
        "blackbox": blackbox,
        "query_budgets": query_budgets,
        "blackbox_n": blackbox_n,
        "blackbox_l2_eps": blackbox_l2_eps,
        "theft": theft,
        "theft_seeds": theft_seeds,
        "membership_shadows": membership_shadows,
        "poisoning_fractions": poisoning_fractions,
        "poisoning_records": poisoning_records,
        "encryption": encryption,
        "encryption_queries": encryption_queries,
        "defense_steps": defense_steps,
        "recipe": recipe,
    }
    flags = {_KNOB_OF.get(k, k): v for k, v in given.items() if v is not None}
    settings = resolve_settings(profile_name=profile, config=config, flags=flags)
    values: dict[str, Any] = settings.values
    clauses = parse_gate(values["fail_under"])
    check_settings(clauses, values)
    folder = (
        Path(values["out"]) if values["out"] else Path("runs") / f"audit-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    )
    model_path, data_spec = values["model"], values["data"]
    # Without a model, run_audit trains the default model itself (or reuses the one a resumed run saved).
    loaded = (
        load_audit_target(
            model_path,
            data_spec,
            epochs=values["epochs"],
            quiet=json_output,
            oracle_config=oracle_config,
            recipe=values["recipe"],
        )
        if model_path
        else None
    )
    train_ds, test_ds = (loaded["train"], loaded["test"]) if loaded else (None, None)
    if loaded is None and data_spec is not None:
        train_ds, test_ds = load_splits(data_spec)
    try:
        report = run_audit(
            loaded["model"] if loaded else None,
            train_ds,
            test_ds,
            **settings.run_kwargs(),
            out_dir=folder,
            progress=not json_output,
            model_info=loaded["info"] if loaded else None,
            fail_under=numeric_bound(clauses),
            overwrite=overwrite,
            settings=settings.to_dict(),
        )
    except RunFolderMismatchError as exc:
        raise RunFolderMismatchError(
            exc.folder,
            exc.differences,
            param="--out",
            fix="pass another --out folder, or add --overwrite to start afresh in this one.",
        ) from None
    outcome = evaluate_gate(clauses, report.to_dict()) if clauses else None
    if outcome is not None:
        report.gate = outcome.record(report.gate)
        write_json(report.to_dict(), folder / "report.json")
        write_html(report.to_dict(), report.figures, folder / "report.html")
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
            f"in {report.timings['total_s']:.1f} s ({settings.profile} profile)"
        )
    if outcome is None:
        return
    for failed in outcome.failures:
        err.print(f"[bold red]Gate failed:[/] [red]{escape(failed.line())}[/]", soft_wrap=True)
    if not outcome.passed:
        raise typer.Exit(EXIT_GATE)
    if not json_output:
        err.print(f"[green]Gate passed:[/] {len(outcome.results)} clause(s) of --fail-under.")
