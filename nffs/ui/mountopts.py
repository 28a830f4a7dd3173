"""Mount options in the `-o name[=value],...` form, as mount(8), /etc/fstab and systemd use them.

`mount -t fuse.nffs -o OPTS FIELD_DIR MOUNTPOINT` makes mount(8) run `mount.fuse3`,
which runs `nffs FIELD_DIR MOUNTPOINT -o OPTS` (adding generic options such as
`rw,dev,suid`). This module turns such an option string into the equivalent
`nffs mount` flags, so both forms share one parser and one set of checks:

* every `nffs mount` flag has an `-o` name (dashes or underscores): `prefetch=markov`,
  `tier=SPEC`, `read_only`/`ro`, `allow_other`, `max_batch=N`,
  `writeback_interval=S`, `metrics_listen=[ADDR:]PORT`, `lock_wait=S`, `refresh_interval=S`, `foreground`, `log_level=L`;
* a tier spec has commas of its own (`tier=dram=/dev/shm/x,kind=dram,capacity=1G`):
  the words after `tier=` that are tier options (`kind=`, `capacity=`, `numa=`,
  `latency=`) belong to that tier;
* generic options of mount(8) and FUSE that mean nothing to nffs are ignored;
  anything else is an error, so a typo never mounts silently with defaults.
"""
from __future__ import annotations

TIER_KEYS = ("kind", "capacity", "numa", "latency")

# Generic mount(8)/fstab/FUSE options accepted and ignored (nffs decides these itself).
IGNORED = {
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto", "user", "nouser", "users",
    "owner", "group", "_netdev", "nofail", "defaults", "async", "sync", "dirsync", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "nostrictatime", "diratime", "nodiratime", "lazytime",
    "nolazytime", "silent", "loud", "mand", "nomand", "default_permissions", "bg", "fg", "nobg",
    "auto_unmount", "remount",
}
IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=", "context=", "fscontext=", "defcontext=",
                    "rootcontext=", "max_read=", "blksize=", "uid=", "gid=", "umask=", "helper=")

FLAGS = {  # option name -> nffs mount flag without a value
    "ro": "--read-only",
    "read_only": "--read-only",
    "allow_other": "--allow-other",
    "foreground": "--foreground",
}
VALUED = {  # option name -> nffs mount flag taking the value
    "prefetch": "--prefetch",
    "tier": "--tier",
    "max_batch": "--max-batch",
    "writeback_interval": "--writeback-interval",
    "metrics_listen": "--metrics-listen",
    "lock_wait": "--lock-wait",
    "refresh_interval": "--refresh-interval",
}
GLOBAL_VALUED = {"log_level": "--log-level"}  # flags of `nffs` itself, placed before `mount`


class MountOptionError(ValueError):
    """An -o option nffs does not know or cannot use."""


def split_options(text: str) -> list[str]:
    """Split on commas, re-joining the parts of a tier spec; empty items are dropped."""
    out: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key = item.split("=", 1)[0]
        if out and key in TIER_KEYS and "=" in item and out[-1].startswith("tier="):
            out[-1] += "," + item
        else:
            out.append(item)
    return out


def options_to_args(texts: list[str]) -> tuple[list[str], list[str]]:
    """(`nffs` global flags, `nffs mount` flags) for the -o strings given (in order)."""
    global_args: list[str] = []
    mount_args: list[str] = []
    for text in texts:
        for item in split_options(text):
            name, has_value, value = item.partition("=")
            key = name.strip().replace("-", "_")
            if key in IGNORED or any(item.startswith(p) for p in IGNORED_PREFIXES):
                continue
            if key in FLAGS:
                if has_value and value.lower() not in ("1", "yes", "true", "on"):
                    if value.lower() in ("0", "no", "false", "off"):
                        continue
                    raise MountOptionError(f"mount option {name} takes no value (got {item!r})")
                mount_args.append(FLAGS[key])
            elif key in VALUED or key in GLOBAL_VALUED:
                if not has_value or not value:
                    raise MountOptionError(f"mount option {name} needs a value: {name}=...")
                if key in VALUED:
                    mount_args += [VALUED[key], value]
                else:
                    global_args += [GLOBAL_VALUED[key], value]
            else:
                known = ", ".join(sorted({*FLAGS, *VALUED, *GLOBAL_VALUED}))
                raise MountOptionError(f"unknown mount option {item!r} (nffs knows: {known})")
    return global_args, mount_args


def rewrite_argv(argv: list[str], commands: set[str]) -> list[str]:
    """Turn the mount.fuse3 call form and `-o` options into ordinary `nffs mount` arguments.

    `nffs FIELD MNT -o OPTS` (the first word is not a command) means `nffs mount FIELD MNT`;
    `-o OPTS`, `-oOPTS` and `--options OPTS` anywhere after `mount` become flags.
    """
    head: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-o", "--options"):
        head.append(argv[i])  # global flags such as --log-level X
        if argv[i] == "--log-level" and i + 1 < len(argv):
            head.append(argv[i + 1])
            i += 1
        i += 1
    rest = argv[i:]
    if not rest:
        return argv
    positional = next((k for k, w in enumerate(rest) if w.startswith("-")), len(rest))
    if rest[0] not in commands and positional == 2:  # exactly FIELD_DIR MOUNTPOINT, then options
        rest = ["mount", *rest]
    if rest[0] != "mount":
        return argv
    texts: list[str] = []
    kept: list[str] = []
    j = 1
    while j < len(rest):
        word = rest[j]
        if word in ("-o", "--options"):
            if j + 1 >= len(rest):
                raise MountOptionError(f"{word} needs a value")
            texts.append(rest[j + 1])
            j += 2
            continue
        if word.startswith("-o") and len(word) > 2 and not word.startswith("--"):
            texts.append(word[2:])
        elif word.startswith("--options="):
            texts.append(word.split("=", 1)[1])
        else:
            kept.append(word)
        j += 1
    if not texts:
        return [*head, *rest]
    global_args, mount_args = options_to_args(texts)
    return [*head, *global_args, "mount", *kept, *mount_args]
