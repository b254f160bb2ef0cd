"""The CLI's build-time commands over `export/`: `pid-sdk export` and `pid-sdk build` (their arguments are declared
in pid_sdk/cli.py, which imports this module only when one of them runs)."""

from __future__ import annotations

from pathlib import Path

from export.build import BuildOptions, build_engines, build_matrix, load_matrix, matrix_variants
from export.export_folder import export_engine_set
from pid_sdk.buckets import Bucket
from pid_sdk.errors import InputError, counted


def export(args) -> int:
    sizes = [Bucket.parse(s) for s in args.size] if args.size else None  # None: the model's trained sizes
    variants = None
    if args.matrix:  # every (precision, attention) the matrix's targets build from
        if args.precision or args.attention_dtype:
            raise InputError("--matrix chooses the precisions and attention dtypes itself.",
                             received=f"--precision {args.precision} --attention-dtype {args.attention_dtype}",
                             fix="drop --precision / --attention-dtype, or drop --matrix")
        variants = matrix_variants(load_matrix(Path(args.matrix)))
    manifest = export_engine_set(args.folder, model=args.model, preset=args.preset, seed=args.seed, sizes=sizes,
                                 batch=args.batch, precisions=args.precision or ["fp32"],
                                 attention_dtype=args.attention_dtype, variants=variants,
                                 trust_pickle=args.trust_pickle, calib_samples=args.calib_samples,
                                 format=args.format, device=args.device, license=args.license)
    print(f"{args.folder}: {counted(len(manifest.entries), 'entry')} ({manifest.config.name})")
    return 0


def build(args) -> int:
    if not args.target and not args.matrix:
        raise InputError("Nothing to build.",
                         fix="pass --target rtx5090 (or h100, gb200) or --matrix engines/matrix.json")
    sizes = [(b.height, b.width) for b in map(Bucket.parse, args.size)] if args.size else None
    options = BuildOptions(strip=args.strip, version_compatible=args.version_compatible,
                           hardware_compatibility=args.hardware_compat,
                           timing_cache=Path(args.timing_cache) if args.timing_cache else None)
    for target in args.target or []:
        built = build_engines(args.folder, target, sizes=sizes, batch=args.batch, precisions=args.precision,
                              options=options)
        print(f"{target}: {counted(len(built), 'engine set')}")
    if not args.matrix:
        return 0
    result = build_matrix(args.folder, load_matrix(Path(args.matrix)), options=options)
    print(f"matrix: {counted(len(result.built), 'engine set')} built here")
    for line in result.elsewhere:
        print(f"needs another host: {line}")
    for line in result.unexported:
        print(f"not exported yet: {line}")
    return 2 if result.unexported else 0
