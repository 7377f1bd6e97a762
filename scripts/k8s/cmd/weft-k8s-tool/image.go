package main

// Container images from Dockerfiles, without a container engine or a registry: the same
// Dockerfile a user builds with `docker build` is read here and carried out on this
// machine, so that the image the cluster runs and the one users build come from one
// recipe.
//
// What is supported (and anything else is refused, never ignored):
//   - the final stage: FROM scratch, or FROM debian:SUITE / debian:SUITE-slim, made with
//     mmdebstrap (variant minbase from the Debian mirror; -slim leaves out documentation,
//     man pages and locales as the official slim images do); then, in order, RUN (in a
//     chroot of the image's root file system, with /dev, /proc, the host's resolv.conf and
//     hosts, in a private mount namespace), COPY [--from=STAGE] [--chmod=MODE] SRC... DST,
//     WORKDIR, ENV, ENTRYPOINT, CMD, EXPOSE, USER, LABEL;
//   - earlier stages (with --host-stages): only WORKDIR, `COPY . .`, ENV and RUN. Their
//     RUN commands run on this machine in the context directory, which stands for the
//     stage's WORKDIR: COPY --from=STAGE WORKDIR/PATH takes CONTEXT/PATH. (deploy/Dockerfile
//     builds the Rust binaries in such a stage: here they are built by this machine's
//     toolchain with the same cargo command.)
//
// The image is one layer (the final root file system) written as a docker-archive
// (manifest.json, config, layer.tar), which `ctr images import` reads. The root file
// system after every RUN step is cached under --cache, keyed by a hash of the FROM line
// and every step up to it (COPY steps by the content of what they copy), like Docker's
// build cache: an unchanged prefix is not built again.

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// baseRecipe names the way base systems are made: change it when from() changes, so that
// cached bases made the old way are not used.
const baseRecipe = "mmdebstrap-minbase-4"

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type instruction struct {
	line  int
	cmd   string // upper case
	args  string // the rest, flags removed
	flags map[string]string
	raw   string // as written, for the cache key and messages
}

type stage struct {
	from   string
	name   string
	instrs []instruction
}

type imageConfig struct {
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
}

type builder struct {
	file, context, cache, mirror string
	hostStages                   bool
	work                         string            // temporary directory
	stageDirs                    map[string]string // host stage name -> context dir
	stageWorkdirs                map[string]string // host stage name -> its WORKDIR
	log                          io.Writer
}

func imageMain(args []string) error {
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	file := fs.String("file", "", "the Dockerfile")
	ctx := fs.String("context", ".", "the build context directory")
	out := fs.String("out", "", "the docker-archive to write")
	cache := fs.String("cache", "", "cache directory (base systems and RUN steps)")
	mirror := fs.String("mirror", "http://deb.debian.org/debian", "Debian mirror for FROM debian:*")
	hostStages := fs.Bool("host-stages", false, "run earlier stages' RUN commands on this machine, in the context directory")
	var tags multiFlag
	fs.Var(&tags, "tag", "image name (repeatable)")
	_ = fs.Parse(args)
	if *file == "" || *out == "" || *cache == "" || len(tags) == 0 {
		return errors.New("--file, --out, --cache and at least one --tag are required")
	}
	ctxAbs, err := filepath.Abs(*ctx)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*cache, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp(*cache, "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	b := &builder{file: *file, context: ctxAbs, cache: *cache, mirror: *mirror, hostStages: *hostStages,
		work: work, stageDirs: map[string]string{}, stageWorkdirs: map[string]string{}, log: os.Stderr}
	stages, err := parseDockerfile(*file)
	if err != nil {
		return err
	}
	return b.build(stages, tags, *out)
}

// parseDockerfile splits the file into stages of instructions (continuation lines joined,
// comments dropped).
func parseDockerfile(file string) ([]stage, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var stages []stage
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	lineNo, start := 0, 0
	var cur strings.Builder
	flush := func() error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		kw, rest, _ := strings.Cut(text, " ")
		in := instruction{line: start, cmd: strings.ToUpper(kw), raw: text, flags: map[string]string{}}
		rest = strings.TrimSpace(rest)
		for strings.HasPrefix(rest, "--") {
			flagText, after, _ := strings.Cut(rest, " ")
			k, v, _ := strings.Cut(strings.TrimPrefix(flagText, "--"), "=")
			in.flags[k] = v
			rest = strings.TrimSpace(after)
		}
		in.args = rest
		if in.cmd == "FROM" {
			parts := strings.Fields(rest)
			st := stage{from: parts[0]}
			if len(parts) == 3 && strings.EqualFold(parts[1], "AS") {
				st.name = parts[2]
			} else if len(parts) != 1 {
				return fmt.Errorf("%s:%d: FROM IMAGE [AS NAME] expected", file, in.line)
			}
			stages = append(stages, st)
			return nil
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				return fmt.Errorf("%s:%d: ARG before FROM is not supported", file, in.line)
			}
			return fmt.Errorf("%s:%d: %s before FROM", file, in.line, in.cmd)
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		return nil
	}
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue // a comment, also inside a continued instruction (as Docker does)
		}
		if cur.Len() == 0 {
			start = lineNo
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\"))
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(trimmed)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("%s: no FROM", file)
	}
	return stages, nil
}

// argv parses the exec form (a JSON array) or the shell form of RUN, CMD, ENTRYPOINT.
func argv(s string) ([]string, error) {
	if strings.HasPrefix(strings.TrimSpace(s), "[") {
		var v []string
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			return nil, fmt.Errorf("bad exec form %s: %v", s, err)
		}
		return v, nil
	}
	return []string{"/bin/sh", "-c", s}, nil
}

func (b *builder) logf(format string, a ...any) {
	fmt.Fprintf(b.log, "image: "+format+"\n", a...)
}

func (b *builder) build(stages []stage, tags []string, out string) error {
	final := stages[len(stages)-1]
	for _, st := range stages[:len(stages)-1] {
		if err := b.hostStage(st); err != nil {
			return err
		}
	}
	// The cache key of every step, then the longest prefix already in the cache.
	keys := make([]string, len(final.instrs))
	h := sha256.Sum256([]byte("from\x00" + final.from + "\x00" + b.mirror + "\x00" + baseRecipe))
	baseKey := hex.EncodeToString(h[:])
	prev := baseKey
	for i, in := range final.instrs {
		hs := sha256.New()
		io.WriteString(hs, prev+"\x00"+in.raw)
		if in.cmd == "COPY" {
			if err := b.hashSources(hs, in); err != nil {
				return err
			}
		}
		prev = hex.EncodeToString(hs.Sum(nil))
		keys[i] = prev
	}
	rootfs := filepath.Join(b.work, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return err
	}
	startAt := 0
	for i := len(final.instrs) - 1; i >= 0; i-- {
		if final.instrs[i].cmd != "RUN" {
			continue
		}
		snap := b.snapshotPath(keys[i])
		if _, err := os.Stat(snap); err == nil {
			b.logf("cached up to line %d (%s)", final.instrs[i].line, short(final.instrs[i].raw))
			if err := untar(snap, rootfs); err != nil {
				return err
			}
			startAt = i + 1
			break
		}
	}
	if startAt == 0 {
		if err := b.from(final.from, baseKey, rootfs); err != nil {
			return err
		}
	}
	cfg := imageConfig{Env: []string{"PATH=" + defaultPath}}
	// Metadata of the cached prefix still applies.
	for _, in := range final.instrs[:startAt] {
		if err := b.meta(&cfg, in); err != nil {
			return err
		}
	}
	used := []string{baseKey}
	for i, in := range final.instrs {
		if in.cmd == "RUN" {
			used = append(used, keys[i])
		}
		if i < startAt {
			continue
		}
		if err := b.step(&cfg, in, rootfs); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", b.file, in.line, short(in.raw), err)
		}
		if in.cmd == "RUN" {
			if err := tarDir(rootfs, b.snapshotPath(keys[i])); err != nil {
				return err
			}
		}
	}
	if err := b.prune(tags, used); err != nil {
		return err
	}
	return writeArchive(rootfs, b.work, cfg, tags, out)
}

func short(s string) string {
	if len(s) > 70 {
		return s[:67] + "..."
	}
	return s
}

func (b *builder) snapshotPath(key string) string {
	return filepath.Join(b.cache, "step-"+key+".tar")
}

// prune deletes cached snapshots that no image's latest build uses (an index per tag).
func (b *builder) prune(tags, used []string) error {
	idx := filepath.Join(b.cache, "index")
	if err := os.MkdirAll(idx, 0o755); err != nil {
		return err
	}
	for _, t := range tags {
		name := regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(t, "_")
		if err := os.WriteFile(filepath.Join(idx, name), []byte(strings.Join(used, "\n")+"\n"), 0o644); err != nil {
			return err
		}
	}
	keep := map[string]bool{}
	entries, _ := os.ReadDir(idx)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(idx, e.Name()))
		if err != nil {
			return err
		}
		for _, k := range strings.Fields(string(data)) {
			keep[k] = true
		}
	}
	files, _ := filepath.Glob(filepath.Join(b.cache, "*-*.tar"))
	for _, f := range files {
		base := filepath.Base(f)
		_, key, _ := strings.Cut(strings.TrimSuffix(base, ".tar"), "-")
		if !keep[key] {
			b.logf("pruning unused cache entry %s", base)
			os.Remove(f)
		}
	}
	return nil
}

var debianFrom = regexp.MustCompile(`^(?:docker\.io/)?(?:library/)?debian:([a-z]+)(-slim)?$`)

// from makes the base root file system of the final stage in rootfs.
func (b *builder) from(image, key, rootfs string) error {
	if image == "scratch" {
		return nil
	}
	m := debianFrom.FindStringSubmatch(image)
	if m == nil {
		return fmt.Errorf("FROM %s: only scratch and debian:SUITE[-slim] can be made here", image)
	}
	base := filepath.Join(b.cache, "base-"+key+".tar")
	if _, err := os.Stat(base); err != nil {
		b.logf("making %s with mmdebstrap (%s)", image, b.mirror)
		tmp := base + ".tmp"
		args := []string{"--variant=minbase", "--mode=root", "--format=tar"}
		if m[2] != "" {
			// What the official -slim images leave out (dpkg keeps these rules in the image
			// for packages installed later).
			for _, o := range []string{
				"path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
				"path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
				"path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
				"path-exclude=/usr/share/lintian/*", "path-exclude=/usr/share/groff/*",
			} {
				args = append(args, "--dpkgopt="+o)
			}
		}
		// As in the official images: apt keeps no downloaded packages and no package
		// cache files in the image (what a RUN apt-get install leaves would bloat it).
		// Written at the end: mmdebstrap itself needs the downloaded packages.
		args = append(args, `--customize-hook=printf '%s\n' 'APT::Keep-Downloaded-Packages "false";' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' > "$1/etc/apt/apt.conf.d/90no-cache"; rm -f "$1"/var/cache/apt/*.bin`)
		args = append(args, m[1], tmp, b.mirror)
		cmd := exec.Command("mmdebstrap", args...)
		cmd.Stdout, cmd.Stderr = b.log, b.log
		if err := cmd.Run(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("mmdebstrap %s: %w (Debian package mmdebstrap)", m[1], err)
		}
		if err := os.Rename(tmp, base); err != nil {
			return err
		}
	}
	return untar(base, rootfs)
}

// hostStage carries out an earlier stage on this machine (see the package comment).
func (b *builder) hostStage(st stage) error {
	if st.name == "" {
		return fmt.Errorf("%s: stage FROM %s has no name (AS NAME): only named stages can be used", b.file, st.from)
	}
	if !b.hostStages {
		return fmt.Errorf("%s: stage %s (FROM %s) would run on this machine: pass --host-stages", b.file, st.name, st.from)
	}
	workdir := "/"
	env := os.Environ()
	for _, in := range st.instrs {
		switch in.cmd {
		case "WORKDIR":
			workdir = path.Join(workdir, in.args)
		case "COPY":
			if strings.Join(strings.Fields(in.args), " ") != ". ." || len(in.flags) != 0 {
				return fmt.Errorf("%s:%d: in a stage run on this machine only `COPY . .` is supported", b.file, in.line)
			}
		case "ENV":
			kv, err := parseEnv(in.args)
			if err != nil {
				return fmt.Errorf("%s:%d: %v", b.file, in.line, err)
			}
			env = append(env, kv...)
		case "RUN":
			args, err := argv(in.args)
			if err != nil {
				return err
			}
			b.logf("stage %s (FROM %s) on this machine, in %s: %s", st.name, st.from, b.context, short(in.args))
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Dir, cmd.Env = b.context, env
			cmd.Stdout, cmd.Stderr = b.log, b.log
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("%s:%d: %s: %w", b.file, in.line, short(in.raw), err)
			}
		default:
			return fmt.Errorf("%s:%d: %s is not supported in a stage run on this machine", b.file, in.line, in.cmd)
		}
	}
	b.stageDirs[st.name] = b.context
	b.stageWorkdirs[st.name] = workdir
	return nil
}

// parseEnv reads ENV K=V [K=V...] or ENV K V.
func parseEnv(s string) ([]string, error) {
	if k, v, ok := strings.Cut(s, " "); ok && !strings.Contains(k, "=") {
		return []string{k + "=" + strings.TrimSpace(v)}, nil
	}
	var out []string
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("ENV %s: want K=V", s)
		}
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		}
		out = append(out, k+"="+v)
	}
	return out, nil
}

// copySources resolves a COPY's sources on this machine and its destination.
func (b *builder) copySources(in instruction) ([]string, string, error) {
	parts := strings.Fields(in.args)
	if strings.HasPrefix(in.args, "[") {
		if err := json.Unmarshal([]byte(in.args), &parts); err != nil {
			return nil, "", err
		}
	}
	if len(parts) < 2 {
		return nil, "", errors.New("COPY SRC... DST expected")
	}
	srcs, dst := parts[:len(parts)-1], parts[len(parts)-1]
	var out []string
	for _, s := range srcs {
		if strings.ContainsAny(s, "*?[") {
			return nil, "", fmt.Errorf("COPY %s: wildcards are not supported", s)
		}
		if from, ok := in.flags["from"]; ok {
			dir, ok := b.stageDirs[from]
			if !ok {
				return nil, "", fmt.Errorf("COPY --from=%s: no such stage", from)
			}
			rel, err := filepath.Rel(b.stageWorkdirs[from], s)
			if err != nil || strings.HasPrefix(rel, "..") || !path.IsAbs(s) {
				return nil, "", fmt.Errorf("COPY --from=%s %s: only paths inside that stage's WORKDIR %s can be taken", from, s, b.stageWorkdirs[from])
			}
			out = append(out, filepath.Join(dir, rel))
		} else {
			clean := filepath.Clean(s)
			if strings.HasPrefix(clean, "..") || filepath.IsAbs(clean) {
				return nil, "", fmt.Errorf("COPY %s: outside the context", s)
			}
			out = append(out, filepath.Join(b.context, clean))
		}
	}
	return out, dst, nil
}

func (b *builder) hashSources(w io.Writer, in instruction) error {
	srcs, _, err := b.copySources(in)
	if err != nil {
		return fmt.Errorf("%s:%d: %w", b.file, in.line, err)
	}
	for _, s := range srcs {
		err := filepath.WalkDir(s, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "\x00%s\x00%o\x00", p, info.Mode())
			if info.Mode().IsRegular() {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = io.Copy(w, f)
				return err
			}
			if info.Mode()&fs.ModeSymlink != 0 {
				t, _ := os.Readlink(p)
				io.WriteString(w, t)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s:%d: %w", b.file, in.line, err)
		}
	}
	return nil
}

// meta applies an instruction's effect on the image configuration.
func (b *builder) meta(cfg *imageConfig, in instruction) error {
	switch in.cmd {
	case "ENV":
		kv, err := parseEnv(in.args)
		if err != nil {
			return err
		}
		for _, e := range kv {
			k, _, _ := strings.Cut(e, "=")
			kept := cfg.Env[:0]
			for _, old := range cfg.Env {
				if !strings.HasPrefix(old, k+"=") {
					kept = append(kept, old)
				}
			}
			cfg.Env = append(kept, e)
		}
	case "WORKDIR":
		cfg.WorkingDir = path.Join("/", cfg.WorkingDir, in.args)
	case "ENTRYPOINT":
		v, err := argv(in.args)
		if err != nil {
			return err
		}
		cfg.Entrypoint, cfg.Cmd = v, nil // as Docker: a new entrypoint resets CMD
	case "CMD":
		v, err := argv(in.args)
		if err != nil {
			return err
		}
		cfg.Cmd = v
	case "USER":
		cfg.User = in.args
	case "EXPOSE":
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range strings.Fields(in.args) {
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			cfg.ExposedPorts[p] = struct{}{}
		}
	case "LABEL":
		if cfg.Labels == nil {
			cfg.Labels = map[string]string{}
		}
		kv, err := parseEnv(in.args)
		if err != nil {
			return err
		}
		for _, e := range kv {
			k, v, _ := strings.Cut(e, "=")
			cfg.Labels[k] = v
		}
	case "RUN", "COPY":
	default:
		return fmt.Errorf("%s is not supported here", in.cmd)
	}
	return nil
}

// step carries out one instruction of the final stage.
func (b *builder) step(cfg *imageConfig, in instruction, rootfs string) error {
	if err := b.meta(cfg, in); err != nil {
		return err
	}
	switch in.cmd {
	case "WORKDIR":
		return os.MkdirAll(filepath.Join(rootfs, cfg.WorkingDir), 0o755)
	case "COPY":
		for k := range in.flags {
			if k != "from" && k != "chmod" {
				return fmt.Errorf("COPY --%s is not supported", k)
			}
		}
		var mode os.FileMode
		if m, ok := in.flags["chmod"]; ok {
			v, err := strconv.ParseUint(m, 8, 32)
			if err != nil {
				return fmt.Errorf("--chmod=%s: %v", m, err)
			}
			mode = os.FileMode(v)
		}
		srcs, dst, err := b.copySources(in)
		if err != nil {
			return err
		}
		toDir := strings.HasSuffix(dst, "/") || len(srcs) > 1
		for _, s := range srcs {
			info, err := os.Stat(s)
			if err != nil {
				return err
			}
			target := filepath.Join(rootfs, dst)
			if info.IsDir() {
				if err := copyTree(s, target, mode); err != nil {
					return err
				}
				continue
			}
			if toDir {
				target = filepath.Join(target, filepath.Base(s))
			}
			if err := copyFile(s, target, mode); err != nil {
				return err
			}
		}
		return nil
	case "RUN":
		args, err := argv(in.args)
		if err != nil {
			return err
		}
		b.logf("RUN %s", short(in.args))
		return runInRoot(rootfs, args, cfg.Env, cfg.WorkingDir, b.log)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	info, err := os.Stat(src)
	if err != nil {
		return err
	}
	if mode == 0 {
		mode = info.Mode().Perm()
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

func copyTree(src, dst string, mode os.FileMode) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		t := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(t, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			os.Remove(t)
			return os.Symlink(link, t)
		default:
			return copyFile(p, t, mode)
		}
	})
}

// runInRoot runs argv chrooted into rootfs, in a private mount namespace with /dev and
// /proc mounted and the host's resolv.conf and hosts in place (as a build container has
// them); the files the image had there before come back afterwards.
func runInRoot(rootfs string, args, env []string, workdir string, log io.Writer) error {
	var created []string
	for _, d := range []string{"dev", "proc", "etc"} {
		p := filepath.Join(rootfs, d)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			created = append(created, p)
		}
	}
	type saved struct {
		path string
		data []byte
		mode os.FileMode
		had  bool
	}
	var restore []saved
	for _, f := range []string{"etc/resolv.conf", "etc/hosts"} {
		p := filepath.Join(rootfs, f)
		s := saved{path: p}
		if info, err := os.Lstat(p); err == nil {
			if info.Mode().IsRegular() {
				s.data, _ = os.ReadFile(p)
				s.mode, s.had = info.Mode().Perm(), true
			} else {
				// A symlink (to systemd-resolved, say): keep it as it is.
				continue
			}
		}
		host, err := os.ReadFile("/" + f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, host, 0o644); err != nil {
			return err
		}
		restore = append(restore, s)
	}
	defer func() {
		for _, s := range restore {
			if s.had {
				os.WriteFile(s.path, s.data, s.mode)
			} else {
				os.Remove(s.path)
			}
		}
		for i := len(created) - 1; i >= 0; i-- {
			os.Remove(created[i]) // only if still empty
		}
	}()
	// chroot starts the command in /; another WORKDIR is entered with env -C (coreutils),
	// which a minimal image without coreutils does not have: there, RUN runs in /.
	script := `set -e; r=$1; shift
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
exec chroot "$r" "$@"`
	if workdir != "" && workdir != "/" {
		args = append([]string{"/usr/bin/env", "-C", workdir}, args...)
	}
	full := append([]string{"--mount", "--propagation", "private", "--fork", "/bin/sh", "-c", script, "sh", rootfs}, args...)
	cmd := exec.Command("unshare", full...)
	cmd.Env = append([]string{"HOME=/root"}, env...)
	cmd.Stdout, cmd.Stderr = log, log
	return cmd.Run()
}

func untar(archive, dir string) error {
	cmd := exec.Command("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", archive, "-C", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tar -x %s: %v: %s", archive, err, out)
	}
	return nil
}

func tarDir(dir, archive string) error {
	tmp := archive + ".tmp"
	cmd := exec.Command("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sort=name", "-cf", tmp, "-C", dir, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("tar -c %s: %v: %s", dir, err, out)
	}
	return os.Rename(tmp, archive)
}

// writeArchive writes the docker-archive: the root file system as one layer.
func writeArchive(rootfs, work string, cfg imageConfig, tags []string, out string) error {
	layer := filepath.Join(work, "layer.tar")
	if err := tarDir(rootfs, layer); err != nil {
		return err
	}
	f, err := os.Open(layer)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	diffID := "sha256:" + hex.EncodeToString(h.Sum(nil))
	config := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      time.Now().UTC().Format(time.RFC3339),
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history":      []map[string]string{{"created_by": "weft-k8s-tool image"}},
	}
	cfgJSON, err := json.Marshal(config)
	if err != nil {
		return err
	}
	ch := sha256.Sum256(cfgJSON)
	cfgName := hex.EncodeToString(ch[:]) + ".json"
	layerName := strings.TrimPrefix(diffID, "sha256:") + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": tags, "Layers": []string{layerName}}})
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	o, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(o)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Now()}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := add(cfgName, cfgJSON); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: path.Dir(layerName) + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Now()}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: layerName, Mode: 0o644, Size: size, ModTime: time.Now()}); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(tw, f); err != nil {
		return err
	}
	if err := add("manifest.json", manifest); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := o.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
