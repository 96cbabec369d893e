"""``--senders``: which envelope senders each authenticated user may give
in MAIL FROM, in a file of its own.

The bindings live apart from the passwords (like Postfix's
``smtpd_sender_login_maps`` beside its password database) because
``htpasswd`` rewrites a user's whole line when it changes the password: a
list kept in the users file was silently dropped, and the user could then
send as anyone.  A line reads ``alice: alice@example.org, @example.org``;
blank lines and ``#`` comments are ignored.  A user with no line may send
as nobody: the rule fails closed.  No bcrypt here, so ``--auth`` with
``--senders`` does not load it.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

from msmtpd.policy.config_files import read_user_lines


class Binding:
    """The addresses and whole domains one user may send as."""

    def __init__(self, addresses: FrozenSet[str], domains: FrozenSet[str]) -> None:
        self.addresses = addresses  # "local@domain", the domain in lower case
        self.domains = domains  # "domain", in lower case

    def permits(self, sender: str) -> bool:
        local, at, domain = sender.rpartition("@")
        if not at or not local:
            return False  # the null sender, or no domain: in no list
        domain = domain.lower()
        return f"{local}@{domain}" in self.addresses or domain in self.domains


class Senders:
    """The session's question "may USER give SENDER in MAIL FROM?"."""

    def __init__(self, bindings: Dict[str, Binding]) -> None:
        self.bindings = bindings

    def may_send(self, user: str, sender: str) -> bool:
        binding = self.bindings.get(user)
        return binding is not None and binding.permits(sender)


def load_senders(path: str) -> Senders:
    """Read ``path``; ConfigError names the file and line of the first problem."""
    return Senders(read_user_lines(path, "--senders", parse_line, "listed"))


def parse_line(line: str) -> Tuple[str, Binding]:
    """``user: alice@example.org, @example.org``; ValueError says what is wrong."""
    user, colon, senders = line.partition(":")
    user = user.strip()
    if not colon or not user or any(c.isspace() or not c.isprintable() for c in user):
        raise ValueError("expected user: alice@example.org, @example.org")
    addresses, domains = set(), set()
    for item in senders.split(","):
        item = item.strip()
        if not item:
            continue
        local, at, domain = item.rpartition("@")
        if not at or not domain or "@" in local or any(c.isspace() for c in item):
            raise ValueError(f"invalid sender '{item}' for user '{user}'"
                             " (expected alice@example.org or @example.org)")
        if local:
            addresses.add(f"{local}@{domain.lower()}")
        else:
            domains.add(domain.lower())
    if not addresses and not domains:
        raise ValueError(f"user '{user}' has an empty list of senders"
                         " (leave the user out: a user with no line may send as nobody)")
    return user, Binding(frozenset(addresses), frozenset(domains))
