import Foundation
import OpenAPIRuntime
import SkiffAPI

/// The backup operations of the REST API (`Manager+Backups`).
extension Handler {
    func backupVM(_ input: Operations.BackupVM.Input) async throws -> Operations.BackupVM.Output {
        await respond { .accepted(.init(body: .json(Self.job(try await manager.backup(input.path.name))))) }
    }

    func listBackupJobs(_ input: Operations.ListBackupJobs.Input) async throws -> Operations.ListBackupJobs.Output {
        await respond { .ok(.init(body: .json(.init(items: try await manager.jobs(vm: input.path.name).map(Self.job))))) }
    }

    func getBackupJob(_ input: Operations.GetBackupJob.Input) async throws -> Operations.GetBackupJob.Output {
        await respond { .ok(.init(body: .json(Self.job(try await manager.job(input.path.id))))) }
    }

    func restoreBackup(_ input: Operations.RestoreBackup.Input) async throws -> Operations.RestoreBackup.Output {
        await respond {
            guard case .json(let r) = input.body else { throw ManagerError.invalid("send application/json") }
            return .accepted(.init(body: .json(Self.job(try await manager.restoreBackup(input.path.id, name: r.name, start: r.start ?? true, live: r.live ?? false)))))
        }
    }

    func getBackupPolicy(_ input: Operations.GetBackupPolicy.Input) async throws -> Operations.GetBackupPolicy.Output {
        await respond {
            _ = try await manager.existing(input.path.name)
            guard let p = try await manager.policy(of: input.path.name) else {
                throw ManagerError.notFound("\(input.path.name) has no backup policy (skiff backup schedule \(input.path.name) --every 1d ...)")
            }
            return .ok(.init(body: .json(Self.policy(p))))
        }
    }

    func setBackupPolicy(_ input: Operations.SetBackupPolicy.Input) async throws -> Operations.SetBackupPolicy.Output {
        await respond {
            guard case .json(let b) = input.body else { throw ManagerError.invalid("send application/json") }
            let p = BackupPolicyRecord(vm: input.path.name, intervalSeconds: b.intervalSeconds, keepLast: b.keepLast ?? 0, keepDaily: b.keepDaily ?? 0,
                                       keepWeekly: b.keepWeekly ?? 0, keepMonthly: b.keepMonthly ?? 0, nextAt: 0)
            return .ok(.init(body: .json(Self.policy(try await manager.setPolicy(p)))))
        }
    }

    func deleteBackupPolicy(_ input: Operations.DeleteBackupPolicy.Input) async throws -> Operations.DeleteBackupPolicy.Output {
        await respond {
            try await manager.deletePolicy(input.path.name)
            return .noContent(.init())
        }
    }

    // MARK: conversions

    /// A job, with its report's figures for a backup that succeeded.
    static func job(_ j: BackupJobRecord) -> Components.Schemas.BackupJob {
        var out = Components.Schemas.BackupJob(id: j.id ?? 0, kind: .init(rawValue: j.kind) ?? .backup, vm: j.vm,
                                               trigger: .init(rawValue: j.trigger) ?? .api, state: .init(rawValue: j.state) ?? .failed,
                                               backup: j.backup, startedAt: j.startedAt, endedAt: j.endedAt)
        if j.state == "succeeded", j.kind == "backup", let d = j.detail,
           let r = (try? JSONSerialization.jsonObject(with: Data(d.utf8))) as? [String: Any] {
            out.mode = r["mode"] as? String
            out.consistency = r["consistency"] as? String
            out.bytesRead = (r["bytesRead"] as? NSNumber)?.int64Value
            out.bytesSent = (r["bytesSent"] as? NSNumber)?.int64Value
            out.seconds = (r["seconds"] as? NSNumber)?.doubleValue
        } else if j.state == "failed" || j.state == "interrupted" {
            out.error = j.detail
        }
        return out
    }

    static func policy(_ p: BackupPolicyRecord) -> Components.Schemas.BackupPolicy {
        .init(intervalSeconds: p.intervalSeconds, keepLast: p.keepLast, keepDaily: p.keepDaily, keepWeekly: p.keepWeekly,
              keepMonthly: p.keepMonthly, nextAt: p.nextAt)
    }
}
