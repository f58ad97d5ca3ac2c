"""Recover the finite-state machine a trained network implements, and check it causally.

collect (activations at a hook site, initial state included) -> reduce (PCA) -> abstract
(grid, k-means, GMM, agglomerative; number of states chosen on held-out fidelity) -> refine ->
majority-vote transitions -> minimize -> networkx graph; or L* with the network as oracle.
"""

from .abstraction import (
    ABSTRACTIONS,
    AgglomerativeAbstraction,
    GMMAbstraction,
    GridAbstraction,
    KMeansAbstraction,
    Reducer,
    make_abstraction,
)
from .build import (
    build_automaton,
    graph_to_automaton,
    refine_partition,
    to_dot,
    to_graph,
    write_dot,
    write_graphml,
)
from .checks import (
    ExtractionReport,
    agreement,
    check_extraction,
    compare_to_task,
    fidelity,
    interchange_accuracy,
    purity,
    task_accuracy,
)
from .collect import Collection, collect, model_labels, resolve_site, sample_words
from .estimator import DEFAULT_METHOD, METHODS, FSMExtractor, extract
from .files import save_extraction
from .lstar import LStarResult, NetworkOracle, lstar

__all__ = [
    "ABSTRACTIONS", "AgglomerativeAbstraction", "GMMAbstraction", "GridAbstraction",
    "KMeansAbstraction", "Reducer", "make_abstraction", "build_automaton", "graph_to_automaton",
    "refine_partition", "to_dot", "to_graph", "write_dot", "write_graphml", "agreement",
    "compare_to_task", "fidelity", "interchange_accuracy", "purity", "task_accuracy",
    "Collection", "collect", "model_labels", "resolve_site", "sample_words", "LStarResult",
    "NetworkOracle", "lstar", "DEFAULT_METHOD", "METHODS", "FSMExtractor", "check_extraction",
    "extract", "save_extraction", "ExtractionReport",
]
