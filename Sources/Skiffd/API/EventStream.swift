import Foundation
import GRDB
import OpenAPIRuntime
import SkiffAPI

/// `GET /v1/events?follow=true`: the events after `since`, then each new
/// one as its transaction commits, one JSON object per line (NDJSON), as
/// `docker events` streams. Woken by GRDB's observation of the event table,
/// not by polling: an idle follower costs nothing, and an event reaches it
/// within the commit's notification. Ends when the client goes.
func followEvents(store: Store, since: Int64) -> AsyncStream<ArraySlice<UInt8>> {
    AsyncStream { continuation in
        let task = Task {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            var last = since
            // The largest sequence number, observed: a new value after every
            // commit that adds an event (pruning lowers nothing).
            let newest = ValueObservation
                .tracking { db in try Int64.fetchOne(db, sql: "SELECT MAX(seq) FROM event") ?? 0 }
                .removeDuplicates()
            do {
                for try await _ in newest.values(in: store.db) {
                    while !Task.isCancelled {
                        let batch = try store.events(since: last, limit: 1_000)
                        guard let end = batch.last?.seq else { break }
                        var lines: [UInt8] = []
                        for e in batch {
                            let event = Components.Schemas.Event(seq: e.seq ?? 0, time: e.time, vm: e.vm, kind: e.kind, detail: e.detail)
                            lines += try encoder.encode(event)
                            lines.append(UInt8(ascii: "\n"))
                        }
                        continuation.yield(ArraySlice(lines))
                        last = end
                    }
                    if Task.isCancelled { break }
                }
            } catch {
                // The store failed or the observation was cancelled: the stream ends.
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in task.cancel() }
    }
}
