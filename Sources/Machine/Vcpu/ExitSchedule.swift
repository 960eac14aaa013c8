import KVM

/// What a deterministic machine does at each of the guest's exits (the VMM
/// implements it; the run loop knows no devices): advance the guest's
/// clock, take inputs, inject interrupts, record or check. Called on the
/// vCPU's thread, after the exit was dispatched and before the next entry.
public protocol ExitSchedule: AnyObject {
    /// After an exit (`reason`, KVM's; a HLT too, which the schedule
    /// ends by giving the guest its next interrupt); nil to go on, or why
    /// the VM stops.
    func afterExit(_ vcpu: KVMVcpu, reason: UInt32) -> StopReason?
    /// The loop ends (`reason`: the guest's, or nil when stopped from the host).
    func finished(_ vcpu: KVMVcpu, reason: StopReason?)
}
