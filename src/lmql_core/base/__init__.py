"""The ground floor: the backend interface, array operations on logits, typed options, the hook
specifications, the installation guard and the public API names; imports nothing else of ours."""
