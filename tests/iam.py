"""A small offline IAM evaluator for the policies dnmon writes, and CloudFormation's intrinsics.

No maintained Python library evaluates IAM policies offline (principalmapper, the one that did,
no longer imports on Python 3.10+; moto's IAM enforcement ignores Resource and Condition). This
covers exactly what the template and the agent API's queue policies use, following AWS's
evaluation logic for one account: an explicit Deny anywhere wins; else an Allow in the identity's
policies or in the resource's own policy allows; else the request is implicitly denied
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html).
Supported: Action (wildcards), Resource (wildcards, ``${aws:...}`` policy variables), Principal
``*`` or ``{"AWS": ...}``, and the condition operators StringEquals, StringNotEquals, StringLike,
Bool. Anything else raises, so a policy that grows beyond it cannot be judged silently.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ALLOW, IMPLICIT_DENY, EXPLICIT_DENY = "Allow", "ImplicitDeny", "ExplicitDeny"
_VARIABLE = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class Request:
    """One API call as IAM sees it: who, what, on which resource, with which context keys."""

    principal_arn: str
    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches(pattern: str, value: str, *, case_sensitive: bool) -> bool:
    if case_sensitive:
        return fnmatch.fnmatchcase(value, pattern)
    return fnmatch.fnmatchcase(value.lower(), pattern.lower())


def _substitute(pattern: str, context: Mapping[str, str]) -> str | None:
    """Policy variables from the request context; None when one is missing (the statement fails)."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = context.get(match.group(1).lower())
        if found is None:
            missing = True
            return ""
        return found.replace("*", "[*]").replace("?", "[?]")  # a variable's value is literal

    text = _VARIABLE.sub(value, pattern)
    return None if missing else text


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, expected in tests.items():
            actual = context.get(key.lower())
            wanted = [str(v) for v in _listed(expected)]
            if operator == "StringEquals":
                ok = actual is not None and actual in wanted
            elif operator == "StringNotEquals":
                ok = actual is None or actual not in wanted
            elif operator == "StringLike":
                ok = actual is not None and any(_matches(w, actual, case_sensitive=True) for w in wanted)
            elif operator == "Bool":
                ok = actual is not None and actual.lower() in [w.lower() for w in wanted]
            else:
                raise NotImplementedError(f"condition operator {operator}")
            if not ok:
                return False
    return True


def _principal_matches(principal: Any, arn: str) -> bool:
    if principal == "*":
        return True
    if isinstance(principal, Mapping):
        return any(p == "*" or p == arn for p in _listed(principal.get("AWS", [])))
    raise NotImplementedError(f"principal {principal!r}")


def _statement_applies(statement: Mapping[str, Any], request: Request, *, resource_policy: bool) -> bool:
    if "NotAction" in statement or "NotResource" in statement or "NotPrincipal" in statement:
        raise NotImplementedError("Not* elements")
    if resource_policy and not _principal_matches(statement.get("Principal"), request.principal_arn):
        return False
    if not any(_matches(a, request.action, case_sensitive=False) for a in _listed(statement["Action"])):
        return False
    resources = [_substitute(r, request.context) for r in _listed(statement["Resource"])]
    if not any(r is not None and _matches(r, request.resource, case_sensitive=True) for r in resources):
        return False
    return _condition_holds(statement.get("Condition") or {}, request.context)


def evaluate(
    request: Request,
    identity_policies: Sequence[Mapping[str, Any]],
    resource_policy: Mapping[str, Any] | None = None,
) -> str:
    decisions: list[str] = []
    for policy, is_resource in [(p, False) for p in identity_policies] + (
        [(resource_policy, True)] if resource_policy else []
    ):
        for statement in _listed(policy["Statement"]):
            if _statement_applies(statement, request, resource_policy=is_resource):
                decisions.append(statement["Effect"])
    if "Deny" in decisions:
        return EXPLICIT_DENY
    return ALLOW if "Allow" in decisions else IMPLICIT_DENY


# --- CloudFormation intrinsics, resolved for one concrete stack ------------------------------------


@dataclass
class Stack:
    """Names for the template's references: ``refs`` for Ref and ``${Name}``, ``attributes`` for
    GetAtt and ``${Name.Attr}``, pseudo parameters included."""

    refs: dict[str, str]
    attributes: dict[str, str]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Ref"}:
            return self.refs[value["Ref"]]
        if set(value) == {"Fn::GetAtt"}:
            name, attribute = value["Fn::GetAtt"]
            return self.attributes[f"{name}.{attribute}"]
        if set(value) == {"Fn::Sub"}:
            return self._sub(value["Fn::Sub"])
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):  # ${!Literal}: written out as ${Literal}
                return "${" + name[1:] + "}"
            return self.attributes[name] if "." in name else self.refs[name]

        return re.sub(r"\$\{([^}]+)\}", replace, text)
