"""``lmql.runtime``: the module paths LMQL 0.7.3's documentation imports from
(``lmql.runtime.program_state``, ``lmql.runtime.decorators``)."""
