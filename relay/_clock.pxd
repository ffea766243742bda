# Clocks for the compiled modules, read without a Python call: monotonic (durations) and
# the wall clock (timestamps in logs). Inline, so there is no module to build.

cdef extern from "time.h":
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp) nogil
    int CLOCK_MONOTONIC
    int CLOCK_REALTIME


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double wallclock() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9
