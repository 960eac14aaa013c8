import Glibc

/// Milliseconds of CLOCK_MONOTONIC: for timing and deadlines on the host
/// (never the wall clock, which can be set back).
public enum MonotonicClock {
    public static var ms: Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }

    public static var ns: Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    }
}
