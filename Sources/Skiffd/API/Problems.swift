import Foundation
import Logging
import SkiffAPI

/// Every operation's output has a `default` case carrying a problem
/// document; `respond` turns a thrown error into it.
protocol ProblemOutput {
    static func `default`(statusCode: Int, _ value: Components.Responses.Problem) -> Self
}

extension Operations.GetVersion.Output: ProblemOutput {}
extension Operations.GetHost.Output: ProblemOutput {}
extension Operations.ListVMs.Output: ProblemOutput {}
extension Operations.CreateVM.Output: ProblemOutput {}
extension Operations.GetVM.Output: ProblemOutput {}
extension Operations.DeleteVM.Output: ProblemOutput {}
extension Operations.StartVM.Output: ProblemOutput {}
extension Operations.StopVM.Output: ProblemOutput {}
extension Operations.KillVM.Output: ProblemOutput {}
extension Operations.PauseVM.Output: ProblemOutput {}
extension Operations.ResumeVM.Output: ProblemOutput {}
extension Operations.ListSnapshots.Output: ProblemOutput {}
extension Operations.SnapshotVM.Output: ProblemOutput {}
extension Operations.CloneVM.Output: ProblemOutput {}
extension Operations.GetLogs.Output: ProblemOutput {}
extension Operations.GetEvents.Output: ProblemOutput {}
extension Operations.GetUsage.Output: ProblemOutput {}
extension Operations.BackupVM.Output: ProblemOutput {}
extension Operations.ListBackupJobs.Output: ProblemOutput {}
extension Operations.GetBackupJob.Output: ProblemOutput {}
extension Operations.RestoreBackup.Output: ProblemOutput {}
extension Operations.GetBackupPolicy.Output: ProblemOutput {}
extension Operations.SetBackupPolicy.Output: ProblemOutput {}
extension Operations.DeleteBackupPolicy.Output: ProblemOutput {}

func problem(_ error: any Error) -> (status: Int, body: Components.Schemas.Problem) {
    let e = error as? ManagerError ?? .internal("\(error)")
    return (e.status, .init(_type: "about:blank", title: e.title, status: e.status, detail: e.description))
}

/// Runs an operation; a failure becomes its problem response.
func respond<O: ProblemOutput>(_ body: () async throws -> O) async -> O {
    do { return try await body() } catch {
        let (status, doc) = problem(error)
        return O.default(statusCode: status, .init(body: .applicationProblemJson(doc)))
    }
}
