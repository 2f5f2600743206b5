"""`equiv slice`: make a family of slices, or verify one."""

from __future__ import annotations

import json

from .common import inputs_of, progress_of, region_of, require_chain, stability_options


def cmd_slice(args, out) -> int:
    from ..apps import slicing
    from ..artifacts.files import OutputGuard
    from ..errors import InputFileError
    from ..solvers import milp_backend
    if args.verify:
        given = any(v is not None for v in (args.spec, args.box, args.center))
        rep = slicing.verify_family(args.verify, model=args.original or args.model, samples=args.samples or 100000,
                                    region=region_of(args)[0] if given else None, certify=args.certify,
                                    certify_time_limit=args.certify_time_limit, backend=milp_backend(args.backend))
        out.emit(json.dumps(rep.to_json(), indent=1) if args.json else rep.format())
        return 0 if rep.ok else 1
    if not (args.model and args.output):
        raise InputFileError("give MODEL.onnx and -o FAMILY to make a family, or --verify FAMILY to check one")
    guard = OutputGuard(inputs_of(args, "model"))
    slicing.claim_output_dir(args.output, guard, args.force)     # refuse before the work
    require_chain(args.model, "equiv slice")
    box, source = region_of(args)
    sopt = slicing.SliceOptions(max_slices=args.max_slices, target_relus=args.target_relus, strategy=args.strategy,
                                validation_samples=args.validation_samples, dispatch_samples=args.dispatch_samples,
                                tolerance=args.tolerance, progress=progress_of(args))
    args.samples = 2000 if args.samples is None else args.samples
    fam = slicing.slice_model(args.model, box, stability_options(args, progress=False), sopt, region_source=source)
    code = 0
    if args.certify:
        certs = slicing.certify_family(fam, backend=milp_backend(args.backend), time_limit=args.certify_time_limit,
                                       progress=sopt.progress)
        bad = [i for i, c in enumerate(certs) if c["verdict"] == "not_equivalent"]
        if bad:
            from ..errors import ValidationError
            raise ValidationError(f"BUG: --certify found slices {bad} differing from the original on their boxes by "
                                  f"more than {args.tolerance:g}; nothing was written. Please report this.")
        unproved = sum(c["verdict"] != "equivalent" for c in certs)
        fam.notes.append(f"--certify: {len(certs) - unproved} of {len(certs)} slices proved equivalent to the original "
                         f"on their boxes (epsilon {args.tolerance:g})" + (f"; {unproved} unknown" if unproved else ""))
        code = 3 if unproved else 0
    manifest = slicing.write_family(fam, args.output)
    out.emit(json.dumps(manifest["summary"], indent=1) if args.json else slicing.format_summary(manifest, args.output))
    return code
