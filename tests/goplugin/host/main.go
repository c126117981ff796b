// Command host is a HashiCorp go-plugin host (Debian 12's go-plugin 1.0.1)
// that launches defender-plugin the way a Go orchestrator would: gRPC
// protocol, AutoMTLS, the documented HandshakeConfig. It checks every step and
// exits 1 on the first thing that is wrong; tests/goplugin/host_test.sh runs it.
//
//	host -plugin BUILD/server/defender-plugin -machine ID -sha1 HASH [-- PLUGIN ARGS...]
//
// The plugin's own settings (tenant, sandbox URL, CA file, state dir) come from
// this process's environment, which go-plugin passes on.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	defenderv1 "defenderplugin/gen/go/defender/v1"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
)

// Handshake is what a host needs to launch defender-plugin (README: "Running
// under go-plugin").
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "DEFENDER_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "1730f8505d13f6ce434bcf7df0efeee5e892ba5307a31e4b6af93b6ebe40d0a0",
}

// defenderPlugin hands out the ResponseService client over go-plugin's
// connection. The host never serves it.
type defenderPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (defenderPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return fmt.Errorf("defender-plugin is served by the plugin binary, not by the host")
}

func (defenderPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	return defenderv1.NewResponseServiceClient(conn), nil
}

// lockedBuffer keeps the host's log (which includes the plugin's stderr) for
// the checks at the end.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "host: FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	pluginPath := flag.String("plugin", "", "the defender-plugin binary")
	machine := flag.String("machine", "", "machine_id to quarantine on")
	sha1 := flag.String("sha1", "", "SHA-1 of the file to quarantine")
	flag.Parse()
	if *pluginPath == "" || *machine == "" || *sha1 == "" {
		fail("usage: host -plugin PATH -machine ID -sha1 HASH [-- PLUGIN ARGS...]")
	}

	var logged lockedBuffer
	logger := hclog.New(&hclog.LoggerOptions{
		Name:   "host",
		Level:  hclog.Debug,
		Output: io.MultiWriter(os.Stderr, &logged),
	})
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          map[string]plugin.Plugin{"defender": defenderPlugin{}},
		Cmd:              exec.Command(*pluginPath, flag.Args()...),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           logger,
		StartTimeout:     30 * time.Second,
	})
	killed := false
	defer func() {
		if !killed {
			client.Kill()
		}
	}()

	// The handshake: protocol, version, address, the plugin's certificate.
	rpcClient, err := client.Client()
	if err != nil {
		fail("starting the plugin: %v", err)
	}
	if client.Protocol() != plugin.ProtocolGRPC {
		fail("protocol %q, want grpc", client.Protocol())
	}
	if v := client.NegotiatedVersion(); v != 1 {
		fail("negotiated app protocol version %d, want 1", v)
	}
	// Ping is go-plugin's health check of service "plugin".
	if err := rpcClient.Ping(); err != nil {
		fail("health check of \"plugin\": %v", err)
	}
	reattach := client.ReattachConfig()
	if reattach == nil || reattach.Addr.Network() != "tcp" ||
		!strings.HasPrefix(reattach.Addr.String(), "127.0.0.1:") {
		fail("the plugin does not listen on 127.0.0.1 over tcp: %v", reattach)
	}
	fmt.Printf("plugin pid %d on %s\n", reattach.Pid, reattach.Addr)

	// AutoMTLS is real: the same address refuses a plaintext client.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	plain, err := grpc.DialContext(ctx, reattach.Addr.String(), grpc.WithInsecure())
	if err == nil {
		_, err = grpc_health_v1.NewHealthClient(plain).Check(ctx,
			&grpc_health_v1.HealthCheckRequest{Service: "plugin"})
		plain.Close()
	}
	cancel()
	if err == nil {
		fail("a plaintext client got an answer from the AutoMTLS listener")
	}

	// The API, through go-plugin's connection.
	raw, err := rpcClient.Dispense("defender")
	if err != nil {
		fail("dispense: %v", err)
	}
	service := raw.(defenderv1.ResponseServiceClient)
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	reply, err := service.QuarantineFile(ctx, &defenderv1.QuarantineFileRequest{
		MachineId: *machine,
		Sha1:      *sha1,
		Comment:   "go-plugin host",
	})
	cancel()
	if err != nil {
		fail("QuarantineFile: %v", err)
	}
	action := reply.GetAction()
	if action.GetId() == "" {
		fail("QuarantineFile returned no action id: %v", reply)
	}
	if action.GetRequestorComment() != "go-plugin host" {
		fail("the action's comment is %q", action.GetRequestorComment())
	}
	if action.GetStatus() != defenderv1.MachineActionStatus_MACHINE_ACTION_STATUS_PENDING {
		fail("the new action is %v, want PENDING", action.GetStatus())
	}
	fmt.Printf("action id %s\n", action.GetId())

	// Kill calls GRPCController.Shutdown and waits up to 2 s for the process
	// to exit before killing it: a graceful exit returns sooner and go-plugin
	// logs the exit without an error.
	started := time.Now()
	client.Kill()
	killed = true
	elapsed := time.Since(started)
	if !client.Exited() {
		fail("the plugin has not exited after Kill")
	}
	if err := syscall.Kill(reattach.Pid, 0); err != syscall.ESRCH {
		fail("process %d still exists after Kill (%v)", reattach.Pid, err)
	}
	if elapsed >= 2*time.Second {
		fail("Kill took %v: the plugin did not exit on GRPCController.Shutdown and was killed", elapsed)
	}
	exitLine := ""
	for _, line := range strings.Split(logged.String(), "\n") {
		if strings.Contains(line, "plugin process exited") {
			exitLine = line
		}
	}
	if exitLine == "" || strings.Contains(exitLine, "error=") {
		fail("the plugin did not exit 0: %q", exitLine)
	}
	if !strings.Contains(logged.String(), "GRPCController.Shutdown") {
		fail("the plugin's log does not show the Shutdown call")
	}
	fmt.Printf("plugin exited 0 after Shutdown in %v\n", elapsed.Round(time.Millisecond))
	fmt.Println("host: ok")
}
