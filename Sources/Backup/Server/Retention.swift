import Foundation

/// Which backups a prune keeps, as Proxmox Backup Server and restic choose
/// them: the newest `last`; then the newest backup of each of the newest
/// `daily` days (UTC) that have one, of `weekly` ISO weeks, of `monthly`
/// months. A backup any rule keeps is kept. A policy that keeps nothing
/// is refused (that is `rm`, not a prune).
public struct Retention: Codable, Sendable, Equatable {
    public var last = 0, daily = 0, weekly = 0, monthly = 0

    public init(last: Int = 0, daily: Int = 0, weekly: Int = 0, monthly: Int = 0) {
        self.last = last; self.daily = daily; self.weekly = weekly; self.monthly = monthly
    }

    public func validate() throws {
        for (n, v) in [("keepLast", last), ("keepDaily", daily), ("keepWeekly", weekly), ("keepMonthly", monthly)] where !(0...100_000).contains(v) {
            throw BackupError.invalid("\(n) \(v): between 0 and 100000")
        }
        guard last + daily + weekly + monthly > 0 else { throw BackupError.invalid("a prune must keep something: give keepLast, keepDaily, keepWeekly or keepMonthly") }
    }

    /// The ids to keep of `backups` (id, time), of one VM.
    public func keep(_ backups: [(id: String, createdAt: Int64)]) -> Set<String> {
        let newest = backups.sorted { ($0.createdAt, $0.id) > ($1.createdAt, $1.id) }
        var kept = Set(newest.prefix(last).map(\.id))
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        func bucket(_ count: Int, _ key: (Date) -> [Int]) {
            var seen: Set<[Int]> = []
            for b in newest where seen.count < count {
                let k = key(Date(timeIntervalSince1970: TimeInterval(b.createdAt)))
                if seen.insert(k).inserted { kept.insert(b.id) }
            }
        }
        bucket(daily) { let c = calendar.dateComponents([.year, .month, .day], from: $0); return [c.year!, c.month!, c.day!] }
        bucket(weekly) { let c = calendar.dateComponents([.yearForWeekOfYear, .weekOfYear], from: $0); return [c.yearForWeekOfYear!, c.weekOfYear!] }
        bucket(monthly) { let c = calendar.dateComponents([.year, .month], from: $0); return [c.year!, c.month!] }
        return kept
    }
}
