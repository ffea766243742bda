# Per-endpoint metric series (opt-in: metrics_endpoint_labels), shared by the compiled
# modules that count them. Slot 0 is "no series": a pump's slot starts at 0, also in
# subclasses whose __init__ does not run Pump's, so an unlabelled connection costs one
# branch per chunk and writes nothing. Slots 1..MAX_ENDPOINT_SERIES are endpoints.

cdef enum:
    MAX_ENDPOINT_SERIES = 10000
    N_ENDPOINT_SLOTS = 10001
