"""Benchmarks that print numbers (medians), one module each, run from the repository root:

    python -m benchmarks.train --data PATH    training images/s (or $AGEGENDER_UTKFACE, or --generated)
    python -m benchmarks.predict              photo-to-explanation latency
    python -m benchmarks.report               bias report and bias page timings
    python -m benchmarks.serve                concurrent requests and memory over a soak
    python -m benchmarks.app                  dashboard start-up time in a real browser

They are tools beside the library, not part of it, and are not installed with it.
"""
