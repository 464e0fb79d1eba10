"""Prefix-affinity routing, as plain Python (no Ray): which replica a prompt of token ids goes to.

The idea of Ray's ``PrefixCacheAffinityRouter`` and SGLang's cache-aware router: remember the
prompts each replica was sent, in a tree of token ids; send a prompt to the replica that holds its
longest prefix (its KV cache likely still does), unless the replicas' loads are imbalanced, then
to the least loaded. LMQL programs re-send a growing prompt, so this keeps a program's requests
on the replica that has computed all but the new part.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Replica = Hashable  # whatever names a replica (Ray's ReplicaID, a string in tests)


class _Node:
    __slots__ = ("children", "replicas")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.replicas: Counter[Replica] = Counter()  # how many stored prompts pass here, per replica


class PrefixTree:
    """The prompts routed to each replica, the most recent ``max_prompts`` of them (older ones
    are forgotten, as the replicas' caches forget them too)."""

    def __init__(self, max_prompts: int = 4096) -> None:
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be at least 1, not {max_prompts}")
        self.max_prompts = max_prompts
        self._root = _Node()
        self._prompts: OrderedDict[tuple[Replica, tuple[int, ...]], None] = OrderedDict()
        self._per_replica: Counter[Replica] = Counter()

    def __len__(self) -> int:
        return len(self._prompts)

    def stored(self, replica: Replica) -> int:
        """How many prompts of ``replica`` are remembered."""
        return self._per_replica[replica]

    def insert(self, replica: Replica, tokens: Sequence[int]) -> None:
        key = (replica, tuple(tokens))
        if key in self._prompts:
            self._prompts.move_to_end(key)
            return
        self._prompts[key] = None
        self._per_replica[replica] += 1
        node = self._root
        for token in key[1]:
            node = node.children.setdefault(token, _Node())
            node.replicas[replica] += 1
        while len(self._prompts) > self.max_prompts:
            self._remove(next(iter(self._prompts)))

    def matches(self, tokens: Sequence[int]) -> dict[Replica, int]:
        """For each replica holding a prefix of ``tokens``: the length of its longest one."""
        found: dict[Replica, int] = {}
        node = self._root
        for depth, token in enumerate(tokens, start=1):
            child = node.children.get(token)
            if child is None:
                break
            for replica in child.replicas:
                found[replica] = depth
            node = child
        return found

    def forget(self, replica: Replica) -> None:
        """Drop every prompt of ``replica`` (it died or was scaled away)."""
        for key in [key for key in self._prompts if key[0] == replica]:
            self._remove(key)

    def _remove(self, key: tuple[Replica, tuple[int, ...]]) -> None:
        del self._prompts[key]
        replica, tokens = key
        self._per_replica[replica] -= 1
        node = self._root
        for token in tokens:
            child = node.children[token]
            child.replicas[replica] -= 1
            if not child.replicas[replica]:
                del child.replicas[replica]
            if not child.replicas:  # nobody else passes here: the whole branch goes
                del node.children[token]
                return
            node = child


@dataclass
class PrefixAffinityPolicy:
    """``rank(tokens, loads)``: the replicas to try, best first. ``loads``: ongoing requests per
    live replica. Imbalanced means the most loaded has more than ``imbalance_threshold`` requests
    beyond the least loaded. A match shorter than ``min_match_tokens`` counts as none (a shared
    BOS or a chat header is no reason to pile onto one replica)."""

    imbalance_threshold: int = 4
    min_match_tokens: int = 2
    tree: PrefixTree = field(default_factory=PrefixTree)

    def rank(self, tokens: Sequence[int], loads: Mapping[Replica, int]) -> list[Replica]:
        by_load = sorted(loads, key=lambda r: (loads[r], self._stored(r), str(r)))
        if not by_load or self.imbalanced(loads):
            return by_load
        matches = {r: n for r, n in self.tree.matches(tokens).items()
                   if r in loads and n >= self.min_match_tokens}
        if not matches:
            return by_load
        longest = max(matches.values())
        best = [r for r in by_load if matches.get(r) == longest]
        return best + [r for r in by_load if r not in best]

    def imbalanced(self, loads: Mapping[Replica, int]) -> bool:
        return max(loads.values()) - min(loads.values()) > self.imbalance_threshold

    def routed(self, replica: Replica, tokens: Sequence[int]) -> None:
        """``tokens`` went to ``replica``: later prompts extending them should follow."""
        if tokens:
            self.tree.insert(replica, tokens)

    def forget(self, replicas: Iterable[Replica]) -> None:
        for replica in replicas:
            self.tree.forget(replica)

    def _stored(self, replica: Replica) -> int:
        """Ties in load go to the replica with fewer prompts stored, to spread the caches."""
        return self.tree.stored(replica)


def routing_key(body: Mapping[str, object]) -> list[int]:
    """The token ids a request's prompt routes by: LMTP's ``prompt`` (+ ``scored``) or OpenAI's
    token-id ``prompt``; a prompt in text (LMTP's text mode, OpenAI's string prompt, chat
    messages) routes by its characters' code points, which extend as the text does."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [*prompt, *_ints(body.get("scored"))]
    if isinstance(prompt, list) and len(prompt) == 1:  # OpenAI's batch of one
        return routing_key({"prompt": prompt[0]})
    text = body.get("text") if "text" in body else prompt
    if isinstance(text, str):
        return [ord(c) for c in text + str(body.get("scored_text") or "")]
    messages = body.get("messages")
    if isinstance(messages, list):
        return [ord(c) for m in messages if isinstance(m, dict) for c in str(m.get("content", ""))]
    return []


def _ints(value: object) -> list[int]:
    return [t for t in value if isinstance(t, int)] if isinstance(value, list) else []
