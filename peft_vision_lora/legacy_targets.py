"""LoRA ``target_modules`` written for transformers 4.x module names, on a 5.x model of a supported family.

Tutorials and existing code say ``target_modules=["query", "value"]``; transformers 5 renamed those modules
(``attention.attention.query`` -> ``attention.q_proj``). :func:`translate_legacy_targets` matches each module's 4.x
name (the architecture table's ``legacy_renames``, inverted) with PEFT's own matching rules, so suffixes, full paths,
regexes, ``layers_to_transform`` and ``modules_to_save`` mean what they meant on 4.x, and rewrites the config to the
5.x names. Targets that already match are left alone; names that match nothing stop with the names the model has.
"""

from __future__ import annotations

import copy
import logging
import re
from functools import partial

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, _ExcludedModule, check_target_module_exists
from peft.utils.constants import INCLUDE_LINEAR_LAYERS_SHORTHAND
from peft.utils.error import NoMatchingPeftModuleError

from .architectures import ARCHITECTURES, VisionArchitecture, legacy_key

logger = logging.getLogger(__name__)


def _candidate_modules(model: torch.nn.Module) -> list[str]:
    """Module names PEFT may adapt: everything but the insides of adapter layers already in the model."""
    tuned = [name + "." for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    return [name for name, _ in model.named_modules() if name and not any(name.startswith(t) for t in tuned)]


def _names_match(target: str, key: str | None) -> bool:
    return key is not None and (key == target or key.endswith(f".{target}"))


def _linear_names(model: torch.nn.Module, arch: VisionArchitecture) -> str:
    """The model's Linear modules, named inside one layer (``attention.q_proj``), with their 4.x names."""
    in_layer = re.compile(r"^(?:.*\.)?\d+\.")  # up to the last layer number
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    current = sorted({in_layer.sub("", name) for name in linear})
    old = sorted({in_layer.sub("", key) for key in map(partial(legacy_key, arch), linear) if key} - set(current))
    return ", ".join(current) + (f" (transformers 4.x: {', '.join(old)})" if old else "")


def _no_match(model: torch.nn.Module, arch: VisionArchitecture, unknown: object, matched: list[str]) -> Exception:
    found = f" ({', '.join(matched)} did match)" if matched else ""
    return NoMatchingPeftModuleError(
        f"Target modules {unknown} not found in the base model {type(model).__name__}{found}, under transformers 5.x "
        f"or 4.x names. Its Linear modules are named: {_linear_names(model, arch)}."
    )


def _selects(config, key: str, old_key: str | None) -> bool:
    """Whether PEFT's rules pick the module under its 5.x name or, unless excluded under it, its 4.x name."""
    current = check_target_module_exists(config, key)
    # PEFT marks a module excluded (exclude_modules, modules_to_save) with a falsy _ExcludedModule: it stays excluded.
    if current or isinstance(current, _ExcludedModule):
        return bool(current)
    return old_key is not None and bool(check_target_module_exists(config, old_key))


def _compact(config, adapted: list[str], candidates: list[str]) -> set[str]:
    """The 5.x leaf names (``{"q_proj", "v_proj"}``) when PEFT would select exactly ``adapted`` with them, else the
    full module paths (a regex over some layers, ``layers_to_transform`` written for 4.x layer names)."""
    leaves = {name.rsplit(".", 1)[-1] for name in adapted}
    trial = copy.copy(config)
    trial.target_modules = leaves
    return leaves if [key for key in candidates if check_target_module_exists(trial, key)] == adapted else set(adapted)


def translate_legacy_targets(config, model: torch.nn.Module) -> None:
    """Rewrite ``config.target_modules`` in place from transformers 4.x names to ``model``'s 5.x names.

    A no-op for models outside the architecture table, for ``all-linear`` and for targets that already match.
    """
    arch = ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None))
    targets = getattr(config, "target_modules", None)
    if arch is None or not targets or targets == INCLUDE_LINEAR_LAYERS_SHORTHAND:
        return
    old_names = {key: legacy_key(arch, key) for key in _candidate_modules(model)}
    if isinstance(targets, str):  # a regex, fully matched against each module path
        if any(check_target_module_exists(config, key) for key in old_names):
            return
        if not any(check_target_module_exists(config, old) for old in old_names.values() if old):
            raise _no_match(model, arch, repr(targets), [])
        legacy = repr(targets)
    else:
        current = [t for t in targets if any(_names_match(t, key) for key in old_names)]
        legacy = sorted(t for t in targets if t not in current and any(_names_match(t, o) for o in old_names.values()))
        unknown = sorted(set(targets) - set(current) - set(legacy))
        if unknown:
            raise _no_match(model, arch, unknown, sorted({*current, *legacy}))
        if not legacy:
            return
    adapted = [key for key, old in old_names.items() if _selects(config, key, old)]
    config.target_modules = _compact(config, adapted, list(old_names))
    # Not a dataclass field, so never saved: it tells a PeftModel.load_adapter that follows (PeftModel.from_pretrained
    # of an adapter saved on 4.x) how to rename the weights.
    config.vision_lora_renamed_modules = {old_names[key]: key for key in adapted if old_names[key]}
    logger.info(
        "LoRA target_modules %s are transformers 4.x names: adapting %d modules of %s under 5.x names (%s).",
        legacy,
        len(adapted),
        type(model).__name__,
        ", ".join(sorted({name.rsplit(".", 1)[-1] for name in adapted})),
    )


def legacy_weight_mapping(config) -> dict[str, str] | None:
    """PEFT's ``key_mapping`` from the 4.x module paths :func:`translate_legacy_targets` replaced to the 5.x ones."""
    renamed = getattr(config, "vision_lora_renamed_modules", None)
    return {rf"^{re.escape(old)}\.": f"{new}." for old, new in renamed.items()} if renamed else None
