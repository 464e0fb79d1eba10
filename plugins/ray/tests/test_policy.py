"""The routing policy alone, without Ray: prefix matches, load imbalance, forgetting."""

from __future__ import annotations

import pytest

from lmql_ray.policy import PrefixAffinityPolicy, PrefixTree, routing_key


def test_tree_reports_the_longest_prefix_each_replica_holds() -> None:
    tree = PrefixTree()
    tree.insert("a", [1, 2, 3, 4])
    tree.insert("b", [1, 2, 9])
    assert tree.matches([1, 2, 3, 4, 5, 6]) == {"a": 4, "b": 2}
    assert tree.matches([1, 2, 9, 9]) == {"a": 2, "b": 3}
    assert tree.matches([7, 1, 2]) == {}


def test_tree_forgets_the_oldest_prompts_beyond_its_capacity() -> None:
    tree = PrefixTree(max_prompts=2)
    tree.insert("a", [1, 2, 3])
    tree.insert("b", [5, 6])
    tree.insert("a", [1, 2, 3])  # used again: now the newest
    tree.insert("b", [7])  # evicts [5, 6], the oldest
    assert len(tree) == 2
    assert tree.matches([5, 6]) == {}
    assert tree.matches([1, 2, 3]) == {"a": 3}
    assert tree.stored("a") == 1 and tree.stored("b") == 1


def test_removing_one_replicas_prompt_keeps_the_shared_branch_of_another() -> None:
    tree = PrefixTree()
    tree.insert("a", [1, 2, 3])
    tree.insert("b", [1, 2, 3, 4])
    tree.forget("b")
    assert tree.matches([1, 2, 3, 4]) == {"a": 3}
    tree.forget("a")
    assert tree.matches([1]) == {}


def test_a_tree_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="max_prompts must be at least 1"):
        PrefixTree(max_prompts=0)


def test_a_growing_prompt_follows_the_replica_that_served_its_prefix() -> None:
    policy = PrefixAffinityPolicy()
    loads = {"a": 0, "b": 0}
    first = policy.rank([1, 2, 3], loads)[0]
    policy.routed(first, [1, 2, 3])
    other = "b" if first == "a" else "a"
    # the replica holding the prefix wins even when it is somewhat busier
    assert policy.rank([1, 2, 3, 4, 5], {first: 3, other: 0})[0] == first


def test_imbalanced_loads_send_to_the_least_loaded_whatever_the_prefix() -> None:
    policy = PrefixAffinityPolicy(imbalance_threshold=4)
    policy.routed("a", [1, 2, 3])
    assert policy.rank([1, 2, 3, 4], {"a": 5, "b": 0}) == ["b", "a"]
    assert policy.rank([1, 2, 3, 4], {"a": 4, "b": 0}) == ["a", "b"]  # at the threshold: still affine


def test_without_a_match_the_least_loaded_goes_first_and_ties_spread_the_caches() -> None:
    policy = PrefixAffinityPolicy()
    assert policy.rank([9, 9], {"a": 2, "b": 1, "c": 3}) == ["b", "a", "c"]
    policy.routed("a", [4, 4])
    assert policy.rank([9, 9], {"a": 0, "b": 0}) == ["b", "a"]


def test_a_match_shorter_than_the_minimum_is_no_match() -> None:
    policy = PrefixAffinityPolicy(min_match_tokens=2)
    policy.routed("b", [1, 7, 7])
    assert policy.rank([1, 5], {"a": 0, "b": 1}) == ["a", "b"]  # only the BOS is shared
    assert policy.rank([1, 7, 5], {"a": 0, "b": 1}) == ["b", "a"]


def test_dead_replicas_are_neither_ranked_nor_remembered() -> None:
    policy = PrefixAffinityPolicy()
    policy.routed("a", [1, 2, 3])
    assert policy.rank([1, 2, 3], {"b": 0}) == ["b"]
    policy.forget(["a"])
    assert policy.tree.matches([1, 2, 3]) == {}
    assert policy.rank([1], {}) == []


def test_routing_keys_of_lmtp_and_openai_requests() -> None:
    assert routing_key({"prompt": [1, 2], "scored": [3]}) == [1, 2, 3]
    assert routing_key({"prompt": [[5, 6]]}) == [5, 6]
    assert routing_key({"text": "ab"}) == [97, 98]
    assert routing_key({"prompt": "ab", "model": "m"}) == [97, 98]
    assert routing_key({"messages": [{"role": "user", "content": "hi"}]}) == [104, 105]
    assert routing_key({"model": "m"}) == []
