import Glibc

/// The one thread that creates threads once seccomp is on. A thread
/// inherits its creator's filter and can only add to it, so if vCPU threads
/// (which activate devices) created device threads, each device would be
/// held to the vCPU's list too. The spawner's own filter is the union of
/// every role's, and each new thread narrows it to its role at once.
final class ThreadSpawner: @unchecked Sendable {
    nonisolated(unsafe) static var shared: ThreadSpawner?

    private final class Request {
        let box: HostThread.Box
        var handle: pthread_t = 0
        var result: Int32 = 0
        var done = sem_t()
        init(_ box: HostThread.Box) { self.box = box; sem_init(&done, 0, 0) }
        deinit { sem_destroy(&done) }
    }

    private var lock = pthread_mutex_t()
    private var work = sem_t()
    private var queue: [Request] = []

    /// Starts the spawner; its thread installs the spawner filter first.
    init() throws {
        pthread_mutex_init(&lock, nil)
        sem_init(&work, 0, 0)
        let body: @Sendable () -> Void = { [unowned self] in
            Seccomp.installOrDie(.spawner, thread: "spawner")
            serve()
        }
        let (_, r) = HostThread.create(HostThread.Box(body))
        guard r == 0 else { throw ThreadError(name: "spawner", code: r) }
    }

    /// Creates a thread on the spawner and waits for it to exist.
    func create(_ box: HostThread.Box) -> (pthread_t, Int32) {
        let request = Request(box)
        pthread_mutex_lock(&lock)
        queue.append(request)
        pthread_mutex_unlock(&lock)
        sem_post(&work)
        while sem_wait(&request.done) != 0 && errno == EINTR {}
        return (request.handle, request.result)
    }

    private func serve() {
        while true {
            while sem_wait(&work) != 0 && errno == EINTR {}
            pthread_mutex_lock(&lock)
            let request = queue.removeFirst()
            pthread_mutex_unlock(&lock)
            (request.handle, request.result) = HostThread.create(request.box)
            sem_post(&request.done)
        }
    }
}
