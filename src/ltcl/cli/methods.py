"""``ltcl methods``: every registered method, mixing strategy, backbone family, sampler and fine-tuning mode, with
its paper and section."""

from __future__ import annotations

import argparse
import dataclasses
import json


def registered(plugins: list[str]) -> dict[str, list[dict]]:
    """What the registries hold (built-in and from ``plugins``), as plain data."""
    from ltcl.data.samplers import SAMPLERS
    from ltcl.decouple import REFITTERS
    from ltcl.methods import MIXINGS, OBJECTIVES
    from ltcl.models import BACKBONES, CLASSIFIERS, FINETUNE_MODES
    from ltcl.plugins import load_plugins

    load_plugins(plugins)
    methods = []
    for name, cls in OBJECTIVES.items():
        section = None
        if cls.Section is not None:
            section = {f.name: _default(f) for f in dataclasses.fields(cls.Section)}
        methods.append(
            {
                "name": name,
                "role": cls.role,
                "paper": cls.paper,
                "section": cls.config_section() if section else None,
                "defaults": section,
            }  # fmt: skip
        )
    backbones = [
        {"family": name, "names": list(f.names) or [f"{f.prefix}<name>"], "paper": f.paper}
        for name, f in BACKBONES.items()
    ]
    mixing = [
        {
            "name": name,
            "paper": m.paper,
            "section": m.config_section() if m.Section is not None else None,
            "defaults": {f.name: _default(f) for f in dataclasses.fields(m.Section)} if m.Section is not None else None,
        }
        for name, m in MIXINGS.items()
    ]
    samplers = [{"name": name, "paper": p.paper} for name, p in SAMPLERS.items()]
    classifiers = [{"name": name, "paper": k.paper} for name, k in CLASSIFIERS.items()]
    modes = [{"name": m.usage, "paper": m.paper} for _, m in FINETUNE_MODES.items()]
    refitters = [
        {
            "name": name,
            "paper": cls.paper,
            "classifier": cls.classifier,
            "defaults": {f.name: _default(f) for f in dataclasses.fields(cls.Section)},
        }
        for name, cls in REFITTERS.items()
    ]
    return {
        "methods": methods,
        "mixing": mixing,
        "backbones": backbones,
        "finetune": modes,
        "samplers": samplers,
        "classifiers": classifiers,
        "refitters": refitters,
    }


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def format_registered(info: dict[str, list[dict]]) -> str:
    lines = ["methods (loss.objective; CLS+CON joins a classification loss and a contrastive term, e.g. bs+acl):"]
    width = max(len(m["name"]) for m in info["methods"])
    for role in ("objective", "classification", "contrastive"):
        for m in sorted((m for m in info["methods"] if m["role"] == role), key=lambda m: m["name"]):
            section = ""
            if m["section"]:
                values = ", ".join(f"{k}={v}" for k, v in m["defaults"].items())
                section = f"\n  {'':<{width}}  loss.{m['section']}: {values}"
            lines.append(f"  {m['name']:<{width}}  {role:<14}  {m['paper']}{section}")
    lines.append("mixing of the classification term (loss.mixing; none by default):")
    for m in info.get("mixing", []):
        values = ", ".join(f"{k}={v}" for k, v in (m["defaults"] or {}).items())
        lines.append(f"  {m['name']}: {m['paper']}" + (f"; loss.{m['section']}: {values}" if m["section"] else ""))
    lines.append("backbone families (model.backbone):")
    for b in info["backbones"]:
        lines.append(f"  {b['family']}: {', '.join(b['names'])} ({b['paper']})")
    lines.append("classifiers (model.classifier):")
    lines += [f"  {c['name']}: {c['paper']}" for c in info["classifiers"]]
    lines.append("samplers (data.sampler):")
    lines += [f"  {s['name']}: {s['paper']}" for s in info["samplers"]]
    lines.append("fine-tuning modes (model.finetune):")
    for m in info["finetune"]:
        lines.append(f"  {m['name']}: {m['paper']}")
    lines.append("two-stage re-fitters (ltcl decouple --method NAME; their values: --set decouple.<key>=value):")
    for r in info["refitters"]:
        values = ", ".join(f"{k}={v}" for k, v in r["defaults"].items())
        lines.append(f"  {r['name']}: {r['paper']}; result: model.classifier {r['classifier']}\n    decouple: {values}")
    return "\n".join(lines)


def cmd_methods(args: argparse.Namespace) -> int:
    info = registered(args.plugin)
    print(json.dumps(info) if args.json else format_registered(info))
    return 0


def register(commands) -> None:
    p = commands.add_parser(
        "methods",
        help="list the registered methods, backbone families, fine-tuning modes, samplers and re-fitters",
        description="List every registered training method (loss.objective) with its role, paper and config "
        "section, the backbone families (model.backbone) and the fine-tuning modes (model.finetune). "
        "--plugin adds the methods of your own files.",
    )
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="a plugin file (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_methods)
