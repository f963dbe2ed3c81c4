"""authz-simple and authz-list: who may connect, by identity (a TLS client
certificate's distinguished name, or a PSK username)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from .registry import ObjectError, choice, reject_unknown, string


@dataclass(frozen=True)
class AuthzSimple:
    """Allows exactly one identity."""

    id: str
    identity: str

    @classmethod
    def create(cls, ident: str, props: dict[str, Any]) -> AuthzSimple:
        reject_unknown(props, {"identity"})
        if "identity" not in props:
            raise ObjectError("Parameter 'identity' is missing")
        return cls(ident, string("identity", props["identity"]))

    def allows(self, identity: str) -> bool:
        return identity == self.identity


@dataclass(frozen=True)
class Rule:
    match: str
    policy: str   # allow | deny
    format: str   # exact | glob

    def matches(self, identity: str) -> bool:
        if self.format == "glob":
            return fnmatch.fnmatchcase(identity, self.match)
        return identity == self.match


@dataclass(frozen=True)
class AuthzList:
    """Rules tried in order; the first that matches decides, else ``policy``."""

    id: str
    policy: str
    rules: tuple[Rule, ...]

    @classmethod
    def create(cls, ident: str, props: dict[str, Any]) -> AuthzList:
        reject_unknown(props, {"policy", "rules"})
        policy = choice("policy", props.get("policy", "deny"), ("allow", "deny"))
        raw = props.get("rules", [])
        if not isinstance(raw, list):
            raise ObjectError("Invalid parameter type for 'rules', expected: array")
        rules = []
        for item in raw:
            if not isinstance(item, dict) or "match" not in item or "policy" not in item:
                raise ObjectError("authz-list: each rule needs 'match' and 'policy'")
            rules.append(Rule(string("match", item["match"]),
                              choice("policy", item["policy"], ("allow", "deny")),
                              choice("format", item.get("format", "exact"), ("exact", "glob"))))
        return cls(ident, policy, tuple(rules))

    def allows(self, identity: str) -> bool:
        for rule in self.rules:
            if rule.matches(identity):
                return rule.policy == "allow"
        return self.policy == "allow"
