"""defender_cc_proto: C++ (and gRPC) code from .proto files with Debian's protoc.

Contract:
- One genrule runs /usr/bin/protoc (with /usr/bin/grpc_cpp_plugin when grpc = True) over srcs,
  exactly as proto/CMakeLists.txt's defender_generate does, and a cc_library compiles the output.
- srcs are paths as the protos import each other ("defender/v1/response_service.proto",
  "google/rpc/status.proto"). Without repo they are files of the calling package; with
  repo = "@system" and prefix they are "@system//:<prefix>/<path>" (Debian's protos).
- The generated files land in the calling package's output directory under those same paths, and
  the cc_library has includes = ["."], so sources #include "defender/v1/response_service.pb.h",
  "google/rpc/status.pb.h", "grpc/health/v1/health.grpc.pb.h", "plugin/grpc_stdio.grpc.pb.h":
  the include paths of CMake's build/gen. No source needs to know which build it is in.
- Every protoc run sees the same import roots as CMake's: its own root, the google/rpc root
  (Debian's gogo googleapis; response_service.proto imports google/rpc/status.proto) and the
  well-known types (/usr/include). The imported files must be inputs: proto_deps lists the labels
  of the .proto files srcs import beyond the well-known types, which are always inputs.
- deps are the cc_library targets of the imported protos (e.g. googleapis_rpc_proto).
"""

_GOOGLEAPIS = "share/gocode/src/github.com/gogo/googleapis"

def _system_path(path):
    # The exec-root path of a file of @system (external/system/...).
    return Label("@system//:BUILD").workspace_root + "/" + path

def defender_cc_proto(
        name,
        srcs,
        grpc = False,
        deps = [],
        proto_deps = [],
        repo = None,
        prefix = "",
        visibility = None,
        **kwargs):
    """C++ code for srcs, in the cc_library `name` (plus the genrule `name + "_gen"`).

    Args:
      name: the cc_library's name (the CMake target's).
      srcs: .proto paths relative to their import root.
      grpc: also run the gRPC plugin (the *.grpc.pb.{h,cc} files).
      deps: cc_library targets of the protos srcs import.
      proto_deps: .proto files srcs import (other than the well-known types).
      repo: None for the calling package's own files, or "@system".
      prefix: with repo, the import root inside it.
      visibility: of the cc_library.
      **kwargs: passed to the cc_library (e.g. tags).
    """
    package = native.package_name()
    if repo:
        labels = ["%s//:%s/%s" % (repo, prefix, src) for src in srcs]
        root = _system_path(prefix)
    else:
        labels = srcs
        root = package if package else "."

    stems = [src[:-len(".proto")] for src in srcs]
    hdrs = [stem + ".pb.h" for stem in stems]
    cc_srcs = [stem + ".pb.cc" for stem in stems]
    plugin = ""
    tools = ["@system//:protoc"]
    if grpc:
        hdrs += [stem + ".grpc.pb.h" for stem in stems]
        cc_srcs += [stem + ".grpc.pb.cc" for stem in stems]
        plugin = (" --plugin=protoc-gen-grpc=$(execpath @system//:grpc_cpp_plugin)" +
                  " --grpc_out=$(RULEDIR)")
        tools.append("@system//:grpc_cpp_plugin")

    roots = [root]
    googleapis = _system_path(_GOOGLEAPIS)
    if root != googleapis:
        roots.append(googleapis)
    roots.append(_system_path("include"))

    native.genrule(
        name = name + "_gen",
        srcs = labels + proto_deps + ["@system//:well_known_protos"],
        outs = hdrs + cc_srcs,
        cmd = ("$(execpath @system//:protoc) " +
               " ".join(["--proto_path=" + r for r in roots]) +
               " --cpp_out=$(RULEDIR)" + plugin + " " +
               " ".join(["$(execpath %s)" % label for label in labels])),
        tools = tools,
        message = "protoc " + " ".join(srcs),
        visibility = ["//visibility:private"],
    )

    runtime = ["@system//:protobuf"]
    if grpc:
        runtime.append("@system//:grpc++")
    native.cc_library(
        name = name,
        srcs = cc_srcs,
        hdrs = hdrs,
        includes = ["."],
        deps = deps + runtime,
        visibility = visibility,
        **kwargs
    )
