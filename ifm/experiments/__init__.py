"""The experiment harness around the method: runs and their records (:mod:`.run`, :mod:`.selfmerge`,
:mod:`.sweep`), training (:mod:`.train`, :mod:`.config`), data and evaluation (:mod:`.data`, :mod:`.evaluate`),
the paper's figures and tables (:mod:`.figures`, :mod:`.plots`, :mod:`.reproduction`), equivalence
(:mod:`.equivalence`), the method comparison (:mod:`.compare`) and file handling (:mod:`.io`).

Nothing in :mod:`ifm` outside this package imports it: the method runs without data, training or plots."""
