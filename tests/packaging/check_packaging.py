#!/usr/bin/python3
"""Static checks of packaging/ (systemd unit, Dockerfile, Kubernetes manifests) against the
built plugin, and the command lines they would run, for packaging_test.sh to start.

  check_packaging.py unit UNIT ENVFILE CREDS HELP OUT
      check the installed unit; write its ExecStart argv (systemd's expansion of %d,
      ${VAR} and $VAR from Environment= and ENVFILE, CREDS as the credentials directory)
      to OUT, one argument a line
  check_packaging.py docker DOCKERFILE SRC DESTDIR CTX HELP OUT
      check the Dockerfile: COPY sources exist in SRC (and are not .dockerignored), the
      builder's COPYs are laid out in CTX (to configure it like the builder would), the
      runtime stage's COPY --from=builder sources exist under DESTDIR (an install with
      --prefix /usr); write the runtime apt-get packages to OUT.packages and the
      ENTRYPOINT argv to OUT
  check_packaging.py libs PACKAGES BINARY...
      every shared library the binaries load comes from a package in PACKAGES (a file,
      one name a line) or from a package those depend on
  check_packaging.py kubernetes YAML HELP BINARY MATERIALS ROOT OUT
      check the manifests; lay out every mounted file under ROOT (ConfigMap data from the
      file, Secret and external ConfigMap keys copied from MATERIALS); write the container's
      argv (paths under ROOT) to OUT and its environment to OUT.env
Exits 1 with "FAIL: ..." lines on stderr at the first failed group of checks.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

failures = []


def fail(message):
    failures.append(message)


def done():
    if failures:
        for message in failures:
            print("FAIL: " + message, file=sys.stderr)
        sys.exit(1)


def write_lines(path, lines):
    with open(path, "w") as out:
        for line in lines:
            if "\n" in line:
                raise SystemExit("argument with a newline: %r" % line)
            out.write(line + "\n")


def help_flags(help_path):
    """The flags defender-plugin --help lists, and the whole text (for variable names)."""
    text = open(help_path).read()
    return set(re.findall(r"^\s+--([a-z0-9-]+)", text, re.M)), text


def check_flags(where, argv, flags):
    """Every --flag in argv (after the binary) is one the plugin lists."""
    for arg in argv[1:]:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if name not in flags:
                fail("%s passes --%s, which defender-plugin --help does not list" % (where, name))


def flag_values(argv):
    """{flag: value} of argv's --flag=value and --flag value pairs."""
    values, i = {}, 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            name, value = arg[2:].split("=", 1)
            values[name] = value
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            values[arg[2:]] = argv[i + 1]
            i += 1
        elif arg.startswith("--"):
            values[arg[2:]] = ""
        i += 1
    return values


# ---------------------------------------------------------------- systemd


def parse_unit(path):
    """[(section, key, value)] of a unit file, continuation lines joined."""
    entries, section, pending = [], None, ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if not pending and (not line.strip() or line.lstrip()[:1] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.rstrip().endswith("]"):
            section = line.strip()[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def parse_env_file(path):
    env = {}
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value.strip().strip('"')
    return env


def expand_exec(value, env, creds):
    """systemd's ExecStart= expansion: specifiers, then ${VAR} (one word) and $VAR (split)."""
    value = value.lstrip("-@:+!")
    words = []
    for word in shlex.split(value.replace("%%", "\0")):
        word = word.replace("%d", creds).replace("\0", "%")
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            words.extend(env.get(word[1:], "").split())
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return words


def check_unit(unit, env_file, creds, help_path, out):
    flags, _ = help_flags(help_path)
    entries = parse_unit(unit)
    service = {}
    for section, key, value in entries:
        if section == "Service":
            service.setdefault(key, []).append(value)

    def one(key):
        values = service.get(key, [])
        return values[-1] if values else None

    required = {
        "DynamicUser": "yes", "StateDirectory": "defender-plugin", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native", "CapabilityBoundingSet": "", "UMask": "0077",
        "Restart": "on-failure", "KillSignal": "SIGTERM",
    }
    for key, want in required.items():
        if one(key) != want:
            fail("unit: %s=%s, want %r" % (key, one(key), want))
    families = set((one("RestrictAddressFamilies") or "").split())
    if families != {"AF_INET", "AF_INET6", "AF_UNIX"}:
        fail("unit: RestrictAddressFamilies=%s" % one("RestrictAddressFamilies"))
    if "@system-service" not in service.get("SystemCallFilter", []):
        fail("unit: no SystemCallFilter=@system-service")
    if one("Type") not in ("simple", "exec"):
        fail("unit: Type=%s; the plugin does not speak sd_notify" % one("Type"))
    if "-HUP $MAINPID" not in (one("ExecReload") or ""):
        fail("unit: ExecReload does not send SIGHUP to $MAINPID: %s" % one("ExecReload"))
    if len(service.get("ExecStart", [])) != 1:
        fail("unit: want exactly one ExecStart")
        done()

    env = {}
    for assignment in service.get("Environment", []):
        for word in shlex.split(assignment):
            key, _, value = word.partition("=")
            env[key] = value
    if not any(value.lstrip("-") == "/etc/defender-plugin/defender-plugin.env"
               for value in service.get("EnvironmentFile", [])):
        fail("unit: EnvironmentFile is not /etc/defender-plugin/defender-plugin.env")
    env.update(parse_env_file(env_file))
    argv = expand_exec(one("ExecStart"), env, creds)
    if not argv[0].endswith("/defender-plugin"):
        fail("unit: ExecStart runs %s" % argv[0])
    check_flags("unit ExecStart", argv, flags)
    values = flag_values(argv)
    for name in ("client-secret", ):
        if name in values:
            fail("unit: a secret on the command line (--%s)" % name)
    # Every credential the command line names is loaded, and every loaded one is used.
    loaded = {value.split(":", 1)[0] for value in service.get("LoadCredential", [])}
    used = set(re.findall(r"%d/([A-Za-z0-9._-]+)", one("ExecStart")))
    if loaded != used:
        fail("unit: LoadCredential ids %s but ExecStart uses %s" % (sorted(loaded), sorted(used)))
    grace = int(values.get("shutdown-grace-seconds", "10"))
    stop = int(re.sub(r"s$", "", one("TimeoutStopSec") or "90"))
    if stop <= grace:
        fail("unit: TimeoutStopSec=%d is not longer than --shutdown-grace-seconds %d" % (stop, grace))
    done()
    write_lines(out, argv)
    print("unit: %d hardening settings, ExecStart %s" % (len(required) + 3, " ".join(argv)))


# ---------------------------------------------------------------- Docker


def dockerfile_instructions(path):
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerignored(rel, patterns):
    import fnmatch
    rel = rel.strip("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
               for p in prefixes):
            ignored = not negate
    return ignored


def check_docker(dockerfile, src, destdir, ctx, help_path, out):
    flags, _ = help_flags(help_path)
    patterns = []
    ignore = os.path.join(src, ".dockerignore")
    if not os.path.exists(ignore):
        fail(".dockerignore is missing")
    else:
        patterns = [l.strip() for l in open(ignore) if l.strip() and not l.startswith("#")]
    stages, workdir = [], "/"
    for instruction, args in dockerfile_instructions(dockerfile):
        if instruction == "FROM":
            stages.append({"from": args.split()[0], "copies": [], "runs": [], "entrypoint": None})
            workdir = "/"
            continue
        if not stages:
            fail("Dockerfile: %s before FROM" % instruction)
            continue
        stage = stages[-1]
        if instruction == "WORKDIR":
            workdir = os.path.join(workdir, args)
        elif instruction == "COPY":
            words = shlex.split(args)
            options = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            stage["copies"].append((options, paths[:-1], os.path.join(workdir, paths[-1]), workdir))
        elif instruction == "RUN":
            stage["runs"].append(args)
        elif instruction == "ENTRYPOINT":
            stage["entrypoint"] = json.loads(args)
        elif instruction == "USER":
            stage["user"] = args
        elif instruction == "EXPOSE":
            stage["expose"] = args.split()
    if len(stages) != 2:
        fail("Dockerfile: want two stages (builder, runtime), found %d" % len(stages))
        done()
    builder, runtime = stages
    if builder["from"] != "debian:12" or runtime["from"] != "debian:12-slim":
        fail("Dockerfile: stages FROM %s and %s, want debian:12 and debian:12-slim"
             % (builder["from"], runtime["from"]))
    # The builder's context files exist, are not .dockerignored, and laid out as the builder
    # sees them they make a tree CMake can configure (packaging_test.sh does that).
    for options, sources, dest, wd in builder["copies"]:
        for source in sources:
            path = os.path.join(src, source)
            if not os.path.exists(path):
                fail("Dockerfile: COPY %s: no such file in the repository" % source)
                continue
            if dockerignored(source, patterns):
                fail("Dockerfile: COPY %s is excluded by .dockerignore" % source)
                continue
            target = os.path.join(ctx, os.path.relpath(dest, "/src"))
            if os.path.isdir(path):
                shutil.copytree(path, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                os.makedirs(target if dest.endswith("/") else os.path.dirname(target), exist_ok=True)
                shutil.copy2(path, target if not dest.endswith("/") else os.path.join(target, os.path.basename(path)))
    # The runtime stage copies what `cmake --install --prefix /usr` into /out produced.
    for options, sources, dest, wd in runtime["copies"]:
        if "--from=builder" not in options:
            fail("Dockerfile: the runtime stage copies %s from the context" % sources)
            continue
        for source in sources:
            if not source.startswith("/out/"):
                fail("Dockerfile: runtime COPY %s is not from the install tree /out" % source)
            elif not os.path.exists(os.path.join(destdir, source[len("/out/"):])):
                fail("Dockerfile: runtime COPY %s: the install does not produce it" % source)
    configure = [run for run in builder["runs"] if "cmake -S . -B build" in run]
    cmake_args = re.findall(r"(-D[A-Za-z_]+=\S+)", configure[0]) if configure else []
    if "-DDEFENDER_BUILD_TESTS=OFF" not in cmake_args:
        fail("Dockerfile: the builder does not configure with -DDEFENDER_BUILD_TESTS=OFF")
    if not any("./scripts/install-deps" in run for run in builder["runs"]) or \
            not any("./scripts/build" in run for run in builder["runs"]):
        fail("Dockerfile: the builder does not use scripts/install-deps and scripts/build")
    packages = []
    for run in runtime["runs"]:
        match = re.search(r"apt-get install (.*?)(&&|$)", run)
        if match:
            packages += [w for w in match.group(1).split() if not w.startswith("-")]
    if not packages:
        fail("Dockerfile: the runtime stage installs no packages")
    user = runtime.get("user", "root").split(":")[0]
    if user in ("", "0", "root"):
        fail("Dockerfile: the runtime stage runs as root")
    if runtime.get("expose") != ["50051"]:
        fail("Dockerfile: EXPOSE %s, want 50051" % runtime.get("expose"))
    argv = runtime["entrypoint"] or []
    if not argv or argv[0] != "/usr/bin/defender-plugin":
        fail("Dockerfile: ENTRYPOINT %s" % argv)
    check_flags("Dockerfile ENTRYPOINT", argv, flags)
    values = flag_values(argv)
    if values.get("listen", "").startswith("0.0.0.0") and "tls-cert" not in values \
            and "insecure-listen" not in values:
        fail("Dockerfile: --listen 0.0.0.0 without TLS is refused by the plugin")
    done()
    write_lines(out, argv)
    write_lines(out + ".packages", packages)
    write_lines(out + ".cmake-args", cmake_args)
    print("docker: %d builder COPYs, runtime packages %s, ENTRYPOINT %s"
          % (len(builder["copies"]), " ".join(packages), " ".join(argv)))


def library_candidates(path):
    """The paths usrmerge makes equivalent to a library path (dpkg knows one of them)."""
    candidates = [path, os.path.realpath(path),
                  os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))]
    for candidate in list(candidates):
        candidates.append(candidate[len("/usr"):] if candidate.startswith("/usr/") else "/usr" + candidate)
    return candidates


def dpkg_owners(paths):
    """{path: package} for the paths dpkg knows, in one dpkg -S (which is slow per call)."""
    result = subprocess.run(["dpkg", "-S"] + sorted(set(paths)), capture_output=True, text=True)
    owners = {}
    for line in result.stdout.splitlines():
        package, _, path = line.partition(": ")
        owners[path.strip()] = package.split(":")[0].strip()
    return owners


def depends_closure(packages):
    """The packages `packages` pull in (Depends, Pre-Depends), as installed here."""
    listing = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Depends}, ${Pre-Depends}\n"],
                             capture_output=True, text=True, check=True).stdout
    depends = {}
    for line in listing.splitlines():
        package, _, fields = line.partition("\t")
        depends[package] = [alternative.split("|")[0].strip().split(" ")[0].split(":")[0]
                            for alternative in fields.split(",")]
    seen, queue = set(), list(packages)
    while queue:
        package = queue.pop()
        if package and package not in seen:
            seen.add(package)
            queue.extend(depends.get(package, []))
    return seen


def check_libs(packages_path, binaries):
    listed = [l.strip() for l in open(packages_path) if l.strip()]
    pulled = depends_closure(listed)
    for binary in binaries:
        needed = set()
        readelf = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True)
        needed = set(re.findall(r"\(NEEDED\).*\[(.+)\]", readelf.stdout))
        ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
        count, failed_before = 0, len(failures)
        libraries = [m.groups() for m in
                     (re.match(r"\s*(\S+) => (\S+)", l) for l in ldd.stdout.splitlines()) if m]
        owners = dpkg_owners([c for _, path in libraries if path != "not" for c in library_candidates(path)])
        for name, path in libraries:
            if path == "not":
                fail("%s: %s not found" % (binary, name))
                continue
            package = next((owners[c] for c in library_candidates(path) if c in owners), None)
            count += 1
            if package is None:
                fail("%s: no Debian package owns %s (%s)" % (os.path.basename(binary), path, name))
            elif name in needed and package not in listed:
                # A library the binary links directly is named in the Dockerfile itself.
                fail("%s links %s (Debian package %s), which the Dockerfile's runtime stage "
                     "does not install" % (os.path.basename(binary), name, package))
            elif package not in pulled:
                fail("%s loads %s (Debian package %s), which no runtime package pulls in"
                     % (os.path.basename(binary), name, package))
        if len(failures) == failed_before:
            print("libs: %s loads %d libraries (%d directly), all from the runtime packages"
                  % (os.path.basename(binary), count, len(needed)))
    done()


# ---------------------------------------------------------------- Kubernetes

API_VERSIONS = {"ServiceAccount": "v1", "ConfigMap": "v1", "Secret": "v1", "Service": "v1",
                "PersistentVolumeClaim": "v1", "Deployment": "apps/v1"}


def check_kubernetes(yaml_path, help_path, binary, materials, root, out):
    import yaml
    flags, help_text = help_flags(help_path)
    binary_strings = open(binary, "rb").read()
    documents = [d for d in yaml.safe_load_all(open(yaml_path)) if d]
    by_kind = {}
    for document in documents:
        kind = document.get("kind")
        if API_VERSIONS.get(kind) != document.get("apiVersion"):
            fail("kubernetes: %s with apiVersion %s" % (kind, document.get("apiVersion")))
        if not document.get("metadata", {}).get("name"):
            fail("kubernetes: a %s without a name" % kind)
        if kind == "Secret" and (document.get("data") or document.get("stringData")):
            fail("kubernetes: Secret %s carries values in the file" % document["metadata"]["name"])
        by_kind.setdefault(kind, {})[document["metadata"]["name"]] = document
    deployments = list(by_kind.get("Deployment", {}).values())
    if len(deployments) != 1:
        fail("kubernetes: want one Deployment")
        done()
    deployment = deployments[0]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in spec["selector"]["matchLabels"].items()):
        fail("kubernetes: the Deployment's selector does not match its pod labels")
    for service in by_kind.get("Service", {}).values():
        if any(labels.get(k) != v for k, v in service["spec"]["selector"].items()):
            fail("kubernetes: Service %s selects no pod of the Deployment" % service["metadata"]["name"])
    if pod.get("serviceAccountName") and pod["serviceAccountName"] not in by_kind.get("ServiceAccount", {}):
        fail("kubernetes: service account %s is not defined" % pod["serviceAccountName"])
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        fail("kubernetes: the pod does not require runAsNonRoot")
    containers = pod["containers"]
    if len(containers) != 1:
        fail("kubernetes: want one container")
        done()
    container = containers[0]
    context = container.get("securityContext", {})
    if context.get("readOnlyRootFilesystem") is not True:
        fail("kubernetes: the root file system is writable")
    if context.get("allowPrivilegeEscalation") is not False:
        fail("kubernetes: privilege escalation allowed")
    if "ALL" not in context.get("capabilities", {}).get("drop", []):
        fail("kubernetes: capabilities not all dropped")
    port_names = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for service in by_kind.get("Service", {}).values():
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if target not in port_names and target not in port_names.values():
                fail("kubernetes: Service port %s targets %s, not a container port" % (port["port"], target))
    http_probes = []
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container.get(probe_name)
        if not probe:
            fail("kubernetes: no %s" % probe_name)
            continue
        if "httpGet" in probe:
            http_probes.append("%s %s" % (probe["httpGet"]["port"], probe["httpGet"]["path"]))
        for kind in ("tcpSocket", "grpc", "httpGet"):
            if kind in probe and probe[kind]["port"] not in port_names and \
                    probe[kind]["port"] not in port_names.values():
                fail("kubernetes: %s probes port %s, not a container port" % (probe_name, probe[kind]["port"]))

    argv = list(container.get("command", [])) + list(container.get("args", []))
    if not argv or argv[0] != "/usr/bin/defender-plugin":
        fail("kubernetes: the container runs %s" % argv[:1])
    check_flags("kubernetes args", argv, flags)
    values = flag_values(argv)
    # What answers each probe: gRPC and TCP probes the --listen port, HTTP the metrics server.
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container.get(probe_name) or {}
        for kind, flag in (("tcpSocket", "listen"), ("grpc", "listen"), ("httpGet", "metrics-listen")):
            if kind in probe:
                port = port_names.get(probe[kind]["port"], probe[kind]["port"])
                if not values.get(flag, "").endswith(":%s" % port):
                    fail("kubernetes: %s %s probes port %s, but --%s is %s"
                         % (probe_name, kind, port, flag, values.get(flag)))
    if "client-secret" in values:
        fail("kubernetes: a secret on the command line (--client-secret)")
    grace = int(values.get("shutdown-grace-seconds", "10"))
    if pod.get("terminationGracePeriodSeconds", 30) <= grace:
        fail("kubernetes: terminationGracePeriodSeconds is not longer than --shutdown-grace-seconds")
    for variable in container.get("env", []):
        name = variable["name"]
        if "valueFrom" not in variable and re.search(r"secret|password|key", name, re.I):
            fail("kubernetes: %s is set inline; a secret comes from a Secret" % name)
        if name not in help_text and name.encode() not in binary_strings:
            fail("kubernetes: env %s is neither in --help nor read by the plugin" % name)

    # Mounts: every volumeMount has its volume; every file a flag names is in a mount and
    # is one of that volume's files; lay them all out under root.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            fail("kubernetes: mount %s has no volume" % mount["name"])
            continue
        mounts[mount["mountPath"]] = (volume, mount)
        directory = root + mount["mountPath"]
        os.makedirs(directory, exist_ok=True)
        source = volume.get("secret") or volume.get("configMap")
        if source is None:
            continue  # emptyDir, persistentVolumeClaim: writable scratch
        if not mount.get("readOnly"):
            fail("kubernetes: %s is mounted writable" % mount["mountPath"])
        claim = volume.get("persistentVolumeClaim")
        name = source.get("secretName") or source.get("name")
        in_file = by_kind.get("ConfigMap", {}).get(name) if "configMap" in volume else None
        if in_file is not None:
            for key, content in in_file.get("data", {}).items():
                with open(os.path.join(directory, key), "w") as f:
                    f.write(content)
        else:
            items = source.get("items")
            if not items:
                fail("kubernetes: volume %s (created outside this file) lists no items" % mount["name"])
                continue
            for item in items:
                material = os.path.join(materials, item["key"])
                if not os.path.exists(material):
                    fail("kubernetes: no test material for key %s" % item["key"])
                    continue
                shutil.copy(material, os.path.join(directory, item["path"]))
    for volume in volumes.values():
        claim = volume.get("persistentVolumeClaim")
        if claim and claim["claimName"] not in by_kind.get("PersistentVolumeClaim", {}):
            fail("kubernetes: claim %s is not defined" % claim["claimName"])
    remapped = [argv[0]]
    for arg in argv[1:]:
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
        else:
            name, value = arg, None
        if value is not None and value.startswith("/"):
            mount = next((m for m in mounts if value == m or value.startswith(m.rstrip("/") + "/")), None)
            if mount is None:
                fail("kubernetes: %s names %s, which no volume provides (the root file "
                     "system is read-only and holds no such file)" % (name, value))
            elif mount != value and not os.path.exists(root + value):
                fail("kubernetes: %s names %s, which volume %s does not provide"
                     % (name, value, mounts[mount][0]["name"]))
            value = root + value
        remapped.append(name if value is None else name + "=" + value)
    state = values.get("state-dir")
    if state and state not in mounts:
        fail("kubernetes: --state-dir %s is not a mounted volume" % state)
    done()
    write_lines(out, remapped)
    write_lines(out + ".probes", http_probes)
    write_lines(out + ".env", ["%s=%s" % (v["name"], v.get("value", "")) for v in container.get("env", [])])
    print("kubernetes: %s; container args %s" % (", ".join(sorted("%s/%s" % (k, n) for k in by_kind for n in by_kind[k])),
                                                " ".join(argv[1:])))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    commands = {"unit": check_unit, "docker": check_docker, "kubernetes": check_kubernetes,
                "libs": lambda packages, *binaries: check_libs(packages, binaries)}
    if command not in commands:
        raise SystemExit(__doc__)
    commands[command](*args)
