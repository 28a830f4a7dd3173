"""One class per kind of node of the mounted namespace (SPEC 4); see base.py for the contract.

| path              | class                                  |
| ----------------- | -------------------------------------- |
| `/`               | `root.RootDirNode`                     |
| `field.json`      | `info.FieldJsonNode`                   |
| `params`          | `views.ParamsNode`                     |
| `levels/`, `NN`   | `views.LevelsDirNode`, `views.LevelNode` |
| `concepts/`, `*`  | `concepts.ConceptsDirNode`, `concepts.ConceptNode` |
| `at/`, `<point>`  | `at.AtDirNode`, `at.AtPointNode`       |
| `query`           | `query.QueryNode`                      |
| `decoder.npz`     | `decoder.DecoderNode`                  |
| `hints`           | `hints.HintsNode`                      |
| `stats`, `metrics`| `info.StatsNode`, `info.MetricsNode`   |
"""
