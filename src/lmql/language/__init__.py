"""``lmql.language``: the module paths LMQL 0.7.3's documentation imports from
(``lmql.language.qstrings``)."""
