"""Keyword arguments of ``model.attribute(...)`` checked by name before any work.

inseq hands each keyword argument of ``model.attribute`` to whichever of three receivers declares it: the
attribution method (:meth:`~inseq.attr.FeatureAttribution.get_attribution_args`: for inseq's built-ins the
parameters of captum's ``attribute``, e.g. ``n_steps``; for this package's methods their options dataclass, e.g.
``norm``), the attributed step function (e.g. ``contrast_targets``) and the step-score functions. A name no
receiver takes is only logged ("Unused arguments during attribution") — or dropped silently for methods without a
captum counterpart — so a typo runs the default. :func:`check_attribution_kwargs` applies the same split and raises
a ``ValueError`` naming the valid options instead; values are validated by the method itself, so a bad value gets
the same ``ValueError`` as ``model.attribute`` gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from inspect import signature
from typing import Any

from inseq.attr import FeatureAttribution
from inseq.attr.step_functions import get_step_function
from inseq.models import AttributionModel


def method_option_names(method: FeatureAttribution) -> list[str]:
    """The options ``method`` takes as keyword arguments of ``model.attribute``.

    This package's methods declare them (``option_names``); inseq's take the parameters of the captum method they
    wrap, less the ones inseq fills in itself (``inputs``, ``target``, ...).
    """
    declared = getattr(method, "option_names", None)
    if declared is not None:
        return list(declared)
    wrapped = getattr(getattr(method, "method", None), "attribute", None)
    if wrapped is None:
        return []
    return [name for name in signature(wrapped).parameters if name not in method.ignore_extra_args]


def step_function_option_names(attribution_model: AttributionModel, functions: Iterable[str]) -> list[str]:
    """Keyword arguments the named step functions take beyond what inseq passes them itself."""
    reserved = set(attribution_model.formatter.get_step_function_reserved_args()) | {"args"}
    names: list[str] = []
    for function in functions:
        names += [name for name in signature(get_step_function(function)).parameters if name not in reserved]
    return list(dict.fromkeys(names))


def check_attribution_kwargs(
    attribution_model: AttributionModel,
    kwargs: Mapping[str, Any],
    attributed_fn: str | None = None,
    step_scores: Iterable[str] = (),
) -> None:
    """Raise a ``ValueError`` for an option no receiver takes, or a value the method refuses.

    Args:
        attribution_model: An inseq model with its attribution method set.
        kwargs: The keyword arguments meant for ``model.attribute``.
        attributed_fn: The attributed step function's name (default: the model's, ``probability``).
        step_scores: Names of the step scores requested.

    Raises:
        ValueError: naming the unknown options and the valid ones, or the method's own error for a bad value.
    """
    method = attribution_model.attribution_method
    # The method's own split (and, for this package's methods, value validation), as model.attribute does it.
    taken, _ = method.get_attribution_args(**kwargs)
    functions = [attributed_fn or attribution_model.default_attributed_fn_id, *step_scores]
    function_options = step_function_option_names(attribution_model, functions)
    unknown = [name for name in kwargs if name not in taken and name not in function_options]
    if unknown:
        options = method_option_names(method)
        valid = ", ".join(options) if options else "none"
        extra = f"; options of the step functions ({', '.join(functions)}): {', '.join(function_options)}"
        raise ValueError(
            f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
            f"{method.method_name}; its options: {valid}" + (extra if function_options else "") + "."
        )
