"""Stage 5b: where the state lives and which components compute it (lens, probes, attention,
activation and attribution patching, causal tracing, circuit discovery, interchange interventions).

One module per analysis; import from the module (`fsm_probe.circuits.patching`)."""
