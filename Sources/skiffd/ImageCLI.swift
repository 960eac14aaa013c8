import ArgumentParser
import Foundation
import Images

/// `skiff appliance build SPEC`: an image from an appliance spec.
struct ApplianceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "appliance", abstract: "Build appliance images from specs (YAML).",
                                                    subcommands: [Build.self])

    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Build SPEC into the image store as NAME:VERSION.")
        @Argument(help: "The spec (YAML), e.g. appliances/nginx.yaml.") var spec: String
        @Option(help: "The image store (default $SKIFF_IMAGES or /var/lib/skiff/images).") var store: String?
        @Flag(help: "Print the manifest (JSON) when done.") var json = false
        func run() throws {
            guard let data = FileManager.default.contents(atPath: spec) else { throw CLIError("\(spec): cannot read it") }
            guard let text = String(data: data, encoding: .utf8) else { throw CLIError("\(spec): not UTF-8 text") }
            var parsed: ApplianceSpec
            do { parsed = try ApplianceSpec.parse(text, source: spec) } catch { throw CLIError("\(error)") }
            let folder = URL(fileURLWithPath: spec).deletingLastPathComponent().path
            parsed.packages = parsed.packages.map { $0.hasPrefix("./") ? folder + "/" + $0.dropFirst(2) : $0 }
            let images = try ImageStore(root: store ?? ImageStore.defaultRoot)
            let t0 = Date()
            let builder = ApplianceBuilder(store: images) { FileHandle.standardError.write(Data("[skiff appliance] \($0)\n".utf8)) }
            do {
                let (digest, manifest) = try builder.build(parsed, specText: text)
                FileHandle.standardError.write(Data("[skiff appliance] built in \(Int(Date().timeIntervalSince(t0))) s\n".utf8))
                if json { try printJSON(manifest) } else { print("\(parsed.name):\(parsed.version) \(digest)") }
            } catch { throw CLIError("\(parsed.name): \(error)") }
        }
    }
}

/// `skiff image ls|inspect|rm|gc`: the content-addressed image store.
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "image", abstract: "The image store.",
                                                    subcommands: [List.self, InspectImage.self, RemoveImage.self, GC.self, Import.self])

    struct StoreOption: ParsableArguments {
        @Option(help: "The image store (default $SKIFF_IMAGES or /var/lib/skiff/images).") var store: String?
        func open() throws -> ImageStore { try ImageStore(root: store ?? ImageStore.defaultRoot) }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List images.")
        @OptionGroup var store: StoreOption
        @Flag(help: "Print JSON.") var json = false
        func run() throws {
            let images = try store.open()
            let refs = try images.references().sorted { $0.key < $1.key }
            if json {
                try printJSON(refs.map { ["reference": $0.key, "digest": $0.value] })
                return
            }
            var rows = [["REFERENCE", "DIGEST", "ROOT", "PACKAGES"]]
            for (ref, digest) in refs {
                let m = try? images.manifest(digest)
                rows.append([ref, String(digest.prefix(19)), m.map { "\($0.rootfsBytes >> 10) KiB" } ?? "?", m.map { String($0.packages.count) } ?? "?"])
            }
            table(rows)
        }
    }

    struct InspectImage: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show an image's manifest (JSON).")
        @OptionGroup var store: StoreOption
        @Argument(help: "NAME[:TAG] or a digest.") var image: String
        func run() throws {
            let images = try store.open()
            do { try printJSON(try images.manifest(try images.resolve(image))) } catch let e as ImageStore.Failure { throw CLIError(e.description) }
        }
    }

    struct RemoveImage: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove references (the blobs go at `gc`).")
        @OptionGroup var store: StoreOption
        @Argument(help: "NAME[:TAG] or a digest.") var images: [String]
        func run() throws {
            let s = try store.open()
            for i in images {
                do { print("untagged \(try s.remove(i))") } catch let e as ImageStore.Failure { throw CLIError(e.description) }
            }
        }
    }

    struct GC: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "gc", abstract: "Delete blobs no reference reaches.")
        @OptionGroup var store: StoreOption
        func run() throws {
            let (n, bytes) = try store.open().collectGarbage()
            print("removed \(n) blobs, \(bytes >> 10) KiB")
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "import",
                                                        abstract: "Import an OCI image layout (folder or tar) or a `docker save` tarball.")
        @OptionGroup var store: StoreOption
        @Argument(help: "The layout folder or the tarball.") var source: String
        @Option(help: "Tag it NAME[:TAG] (default: the archive's own tag, else imported:DIGEST).") var tag: String?
        func run() throws {
            var ref: ImageReference?
            if let tag {
                guard let r = OCIImporter.reference(tag), !tag.contains("/") else { throw CLIError("--tag \(tag.prefix(80)): not NAME[:TAG]") }
                ref = r
            }
            let importer = OCIImporter(store: try store.open()) { FileHandle.standardError.write(Data("[skiff image import] \($0)\n".utf8)) }
            do {
                let (digest, _) = try importer.importImage(source, tag: ref)
                print(digest)
            } catch { throw CLIError("\(source): \(error)") }
        }
    }
}
