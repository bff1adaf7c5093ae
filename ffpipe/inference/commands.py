"""The command line's `ffpipe predict` and `ffpipe export` (cli.py registers them with one call).
Nothing heavy at import: torch comes with the command that needs it."""
from __future__ import annotations

COMMANDS = ("predict", "export")
RUN_DIR_HELP = "the run folder written by ffpipe train (a local path or the storage URI it printed)"


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="classes of image files by a trained run, as CSV")
    p.add_argument("--run-dir", required=True, help=RUN_DIR_HELP)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (PNG, JPEG, ...) or folders of them")
    p.add_argument("--out", help="write the CSV here (default: stdout)")
    p.add_argument("--exit-at", type=int, metavar="UNIT", help="answer after this unit, with the vote of units 0..UNIT")
    p.add_argument("--min-confidence", type=float, metavar="P", help="each image answers after the first unit "
                   "whose vote so far gives its top class a probability of at least P")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    e = sub.add_parser("export", help="a trained run as one safetensors, ONNX or TorchScript file")
    e.add_argument("--run-dir", required=True, help=RUN_DIR_HELP)
    e.add_argument("--format", required=True, choices=["safetensors", "onnx", "torchscript"])
    e.add_argument("--out", help="the file to write (default: RUN/export/model.<suffix>)")


def run_command(args) -> int:
    if args.command == "predict":
        from ffpipe.inference.predict import predict_files

        predict_files(args.run_dir, args.paths, args.out, args.exit_at, args.min_confidence, args.device)
        return 0
    from ffpipe.inference.export import export_run

    print(f"wrote {export_run(args.run_dir, args.format, args.out)}")
    return 0
