import Foundation
import OpenAPIRuntime
import ServiceLifecycle
import SkiffAPI

/// The REST API (Sources/SkiffAPI/openapi.yaml) on the manager. Every
/// failure is a problem document (`application/problem+json`) whose
/// `detail` says what to do.
struct Handler: APIProtocol {
    let manager: Manager
    static let version = "0.10.0"

    func getVersion(_ input: Operations.GetVersion.Input) async throws -> Operations.GetVersion.Output {
        .ok(.init(body: .json(.init(version: Self.version, api: 1))))
    }

    func getHost(_ input: Operations.GetHost.Input) async throws -> Operations.GetHost.Output {
        await respond {
            let h = try await manager.hostSummary()
            return .ok(.init(body: .json(.init(cpus: h.cpus, memoryMiB: h.memoryMiB, reservedCpus: h.reservedCpus,
                                               reservedMemoryMiB: h.reservedMemoryMiB, cgroup: h.cgroup, vms: h.vms))))
        }
    }

    func listVMs(_ input: Operations.ListVMs.Input) async throws -> Operations.ListVMs.Output {
        await respond {
            var filter: (String, String)?
            if let l = input.query.label {
                guard let eq = l.firstIndex(of: "=") else { throw ManagerError.invalid("label \(l.prefix(80)): give key=value") }
                filter = (String(l[..<eq]), String(l[l.index(after: eq)...]))
            }
            let vms = try await manager.list().filter { vm in
                guard let (k, v) = filter else { return true }
                return (try? JSON.decode([String: String].self, vm.labels))?[k] == v
            }
            return .ok(.init(body: .json(.init(items: try vms.map(Self.vm)))))
        }
    }

    func createVM(_ input: Operations.CreateVM.Input) async throws -> Operations.CreateVM.Output {
        await respond {
            guard case .json(let c) = input.body else { throw ManagerError.invalid("send application/json") }
            let r = c.resources
            let spec = VMSpec(kernel: c.kernel, initrd: c.initrd, cmdline: c.cmdline, cpus: c.cpus ?? 1, memoryMiB: c.memoryMiB ?? 128,
                              disks: (c.disks ?? []).map { .init(path: $0.path, readOnly: $0.readOnly ?? false, changeTracking: $0.changeTracking) },
                              snapshot: c.snapshot, cloneIndex: nil,
                              resources: .init(cpuShares: r?.cpuShares, cpuLimit: r?.cpuLimit, cpuReservation: r?.cpuReservation,
                                               memoryLimitMiB: r?.memoryLimitMiB, memoryReservationMiB: r?.memoryReservationMiB))
            let request = Manager.CreateRequest(name: c.name, labels: c.labels?.additionalProperties ?? [:], spec: spec,
                                                restartPolicy: RestartPolicy(rawValue: c.restartPolicy?.rawValue ?? "no") ?? .no,
                                                start: c.start ?? true)
            return .created(.init(body: .json(try Self.vm(try await manager.createWithFiles(request)))))
        }
    }

    func getVM(_ input: Operations.GetVM.Input) async throws -> Operations.GetVM.Output {
        await respond { .ok(.init(body: .json(try Self.vm(try await manager.existing(input.path.name))))) }
    }

    func deleteVM(_ input: Operations.DeleteVM.Input) async throws -> Operations.DeleteVM.Output {
        await respond {
            try await manager.delete(input.path.name, force: input.query.force ?? false)
            return .noContent(.init())
        }
    }

    func startVM(_ input: Operations.StartVM.Input) async throws -> Operations.StartVM.Output {
        await respond { .ok(.init(body: .json(try Self.vm(try await manager.start(input.path.name))))) }
    }

    func stopVM(_ input: Operations.StopVM.Input) async throws -> Operations.StopVM.Output {
        await respond {
            var timeout = 10
            if case .json(let s) = input.body, let t = s.timeoutSeconds {
                guard (0...3600).contains(t) else { throw ManagerError.invalid("timeoutSeconds \(t): between 0 and 3600") }
                timeout = t
            }
            return .ok(.init(body: .json(try Self.vm(try await manager.stop(input.path.name, timeoutSeconds: timeout)))))
        }
    }

    func killVM(_ input: Operations.KillVM.Input) async throws -> Operations.KillVM.Output {
        await respond { .ok(.init(body: .json(try Self.vm(try await manager.kill(input.path.name))))) }
    }

    func pauseVM(_ input: Operations.PauseVM.Input) async throws -> Operations.PauseVM.Output {
        await respond { .ok(.init(body: .json(try Self.vm(try await manager.pause(input.path.name))))) }
    }

    func resumeVM(_ input: Operations.ResumeVM.Input) async throws -> Operations.ResumeVM.Output {
        await respond { .ok(.init(body: .json(try Self.vm(try await manager.resume(input.path.name))))) }
    }

    func listSnapshots(_ input: Operations.ListSnapshots.Input) async throws -> Operations.ListSnapshots.Output {
        await respond { .ok(.init(body: .json(.init(items: try await manager.snapshots(input.path.name).map(Self.snapshot))))) }
    }

    func snapshotVM(_ input: Operations.SnapshotVM.Input) async throws -> Operations.SnapshotVM.Output {
        await respond {
            var name: String?
            if case .json(let s) = input.body { name = s.name }
            return .created(.init(body: .json(Self.snapshot(try await manager.snapshot(input.path.name, snapshotName: name)))))
        }
    }

    func cloneVM(_ input: Operations.CloneVM.Input) async throws -> Operations.CloneVM.Output {
        await respond {
            guard case .json(let c) = input.body else { throw ManagerError.invalid("send application/json") }
            if let p = c.namePrefix, let problem = Names.problem(p, what: "namePrefix") { throw ManagerError.invalid(problem) }
            let vms = try await manager.clone(input.path.name, count: c.count, snapshotName: c.snapshot, prefix: c.namePrefix)
            return .created(.init(body: .json(.init(items: try vms.map(Self.vm)))))
        }
    }

    func getLogs(_ input: Operations.GetLogs.Input) async throws -> Operations.GetLogs.Output {
        await respond {
            if let t = input.query.tail, !(0...16 << 20).contains(t) { throw ManagerError.invalid("tail \(t): between 0 and 16777216 bytes") }
            let vm = try await manager.existing(input.path.name)
            let path = await manager.directory(vm).console
            let head = Console.read(path, tail: input.query.tail)
            guard input.query.follow == true else { return .ok(.init(body: .plainText(HTTPBody(head)))) }
            // A follower ends when skiffd shuts down, which waits for open responses.
            let stream = followLog(manager: manager, name: vm.name, path: path, first: head).cancelOnGracefulShutdown()
            return .ok(.init(body: .plainText(HTTPBody(stream, length: .unknown, iterationBehavior: .single))))
        }
    }

    func getEvents(_ input: Operations.GetEvents.Input) async throws -> Operations.GetEvents.Output {
        await respond {
            if let s = input.query.since, s < 0 { throw ManagerError.invalid("since \(s): a sequence number, 0 or more") }
            if input.query.follow == true {
                let stream = followEvents(store: manager.store, since: input.query.since ?? 0).cancelOnGracefulShutdown()
                return .ok(.init(body: .applicationXNdjson(HTTPBody(stream, length: .unknown, iterationBehavior: .single))))
            }
            let events = try manager.store.events(since: input.query.since ?? 0)
            return .ok(.init(body: .json(.init(items: events.map { .init(seq: $0.seq ?? 0, time: $0.time, vm: $0.vm, kind: $0.kind, detail: $0.detail) }))))
        }
    }

    func getUsage(_ input: Operations.GetUsage.Input) async throws -> Operations.GetUsage.Output {
        await respond {
            let from = input.query.from, to = input.query.to
            for (n, v) in [("from", from), ("to", to)] { if let v, v < 0 { throw ManagerError.invalid("\(n) \(v): Unix seconds, 0 or more") } }
            let records = try await manager.usage(from: from, to: to)
            let labels = Dictionary(try await manager.list().map { ($0.name, (try? JSON.decode([String: String].self, $0.labels)) ?? [:]) },
                                    uniquingKeysWith: { a, _ in a })
            let items = records.map { u in
                Components.Schemas.VMUsage(vm: u.vm, labels: .init(additionalProperties: labels[u.vm] ?? [:]), vcpuSeconds: u.vcpuSeconds,
                                           memoryGiBSeconds: u.memoryGiBSeconds, diskReadBytes: u.diskReadBytes, diskWriteBytes: u.diskWriteBytes,
                                           diskReadOps: u.diskReadOps, diskWriteOps: u.diskWriteOps, netRxBytes: u.netRxBytes, netTxBytes: u.netTxBytes,
                                           secondsRunning: u.secondsRunning, secondsPaused: u.secondsPaused, snapshotBytes: u.snapshotBytes)
            }
            let now = Int64(Date().timeIntervalSince1970)
            return .ok(.init(body: .json(.init(from: from ?? (records.map(\.minute).min() ?? now), to: to ?? now, items: items))))
        }
    }

    // MARK: conversions

    static func vm(_ r: VMRecord) throws -> Components.Schemas.Vm {
        let s = try JSON.decode(VMSpec.self, r.spec)
        let labels = (try? JSON.decode([String: String].self, r.labels)) ?? [:]
        return .init(name: r.name, id: r.id, labels: .init(additionalProperties: labels), kernel: s.kernel, initrd: s.initrd, cmdline: s.cmdline,
                     cpus: s.cpus, memoryMiB: s.memoryMiB, disks: s.disks.map { .init(path: $0.path, readOnly: $0.readOnly, changeTracking: $0.tracked) },
                     snapshot: s.snapshot, restartPolicy: .init(rawValue: r.restartPolicy) ?? .no,
                     resources: .init(cpuShares: s.resources.cpuShares, cpuLimit: s.resources.cpuLimit, cpuReservation: s.resources.cpuReservation,
                                      memoryLimitMiB: s.resources.memoryLimitMiB, memoryReservationMiB: s.resources.memoryReservationMiB),
                     desired: .init(rawValue: r.desired) ?? .stopped, observed: .init(rawValue: r.observed) ?? .exited,
                     pid: r.pid.map { Int($0) }, exitStatus: r.exitStatus.map { Int($0) }, stopReason: r.stopReason,
                     restarts: Int(r.restarts), createdAt: r.createdAt, startedAt: r.startedAt, stoppedAt: r.stoppedAt)
    }

    static func snapshot(_ s: SnapshotRecord) -> Components.Schemas.Snapshot {
        .init(name: s.name, vm: s.vm, path: s.path, bytes: s.bytes, createdAt: s.createdAt)
    }
}
