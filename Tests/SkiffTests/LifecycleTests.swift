import SkiffControl
import XCTest

/// The VMM's lifecycle table (SkiffControl.Lifecycle): what each state
/// allows, and that nothing leaves `stopped`.
final class LifecycleTests: XCTestCase {
    func testTheTable() {
        XCTAssertEqual(Lifecycle.created.after(.start), .running)
        XCTAssertEqual(Lifecycle.created.after(.startPaused), .paused)
        XCTAssertEqual(Lifecycle.running.after(.pause), .paused)
        XCTAssertEqual(Lifecycle.paused.after(.resume), .running)
        XCTAssertEqual(Lifecycle.running.after(.snapshot), .snapshotting(resumeAfter: true))
        XCTAssertEqual(Lifecycle.paused.after(.snapshot), .snapshotting(resumeAfter: false))
        XCTAssertEqual(Lifecycle.snapshotting(resumeAfter: true).after(.snapshotDone), .running)
        XCTAssertEqual(Lifecycle.snapshotting(resumeAfter: false).after(.snapshotDone), .paused)
        XCTAssertEqual(Lifecycle.stopping.after(.end), .stopped)
        for s in [Lifecycle.created, .running, .paused, .snapshotting(resumeAfter: true), .stopping] {
            XCTAssertEqual(s.after(.stop), .stopping, "\(s) can always be stopped")
        }
        // What a state does not allow.
        XCTAssertNil(Lifecycle.running.after(.resume))
        XCTAssertNil(Lifecycle.paused.after(.pause))
        XCTAssertNil(Lifecycle.created.after(.pause))
        XCTAssertNil(Lifecycle.snapshotting(resumeAfter: true).after(.snapshot), "one snapshot at a time")
        XCTAssertNil(Lifecycle.snapshotting(resumeAfter: true).after(.pause))
        XCTAssertNil(Lifecycle.stopping.after(.resume))
        XCTAssertNil(Lifecycle.running.after(.end), "a VM ends only after it stops")
        for e: Lifecycle.Event in [.start, .startPaused, .pause, .resume, .snapshot, .snapshotDone, .stop, .end] {
            XCTAssertNil(Lifecycle.stopped.after(e), "stopped is final (\(e))")
        }
        XCTAssertEqual(LifecycleError(state: .stopping, event: .resume).description, "cannot resume a VM that is stopping")
    }
}
