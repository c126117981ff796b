// quarantine_and_watch: a SOAR playbook step. Quarantines a file on a device
// through the defender-plugin, then watches the action until it is final.
//
// Prints one JSON object per line (submitted, status..., final). Exit codes:
// 0 final and succeeded; 1 final but not succeeded; 2 usage error; 3 RPC error
// (stderr: "quarantine_and_watch: CODE: message [reason]"); 4 watch timeout.
// Built in GOPATH mode against the stubs of clients/go/generate.sh.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"regexp"
	"strings"
	"time"

	defenderv1 "defenderplugin/gen/go/defender/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const prog = "quarantine_and_watch"

func usage(msg string) {
	fmt.Fprintf(os.Stderr, "%s: %s\n", prog, msg)
	os.Exit(2)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func emit(fields map[string]string) {
	b, _ := json.Marshal(fields)
	fmt.Println(string(b))
}

func rpcError(err error) int {
	st := status.Convert(err)
	text := fmt.Sprintf("%s: %s: %s", prog, strings.ToUpper(codeName(st.Code())), st.Message())
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Reason != "" {
			text += " [" + info.Reason + "]"
		}
	}
	fmt.Fprintln(os.Stderr, text)
	return 3
}

// codeName gives the canonical name (INVALID_ARGUMENT, CANCELLED), not Go's CamelCase.
func codeName(c codes.Code) string {
	if c == codes.Canceled {
		return "CANCELLED" // Go spells it Canceled
	}
	return regexp.MustCompile(`([a-z])([A-Z])`).ReplaceAllString(c.String(), "${1}_${2}")
}

func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func final(s defenderv1.MachineActionStatus) bool {
	switch s {
	case defenderv1.MachineActionStatus_MACHINE_ACTION_STATUS_SUCCEEDED,
		defenderv1.MachineActionStatus_MACHINE_ACTION_STATUS_FAILED,
		defenderv1.MachineActionStatus_MACHINE_ACTION_STATUS_TIMED_OUT,
		defenderv1.MachineActionStatus_MACHINE_ACTION_STATUS_CANCELLED:
		return true
	}
	return false
}

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	target := fs.String("target", envOr("DEFENDER_PLUGIN_TARGET", "127.0.0.1:50051"), "HOST:PORT of the plugin")
	tlsCA := fs.String("tls-ca", os.Getenv("DEFENDER_PLUGIN_CA"), "PEM CAs to trust (TLS); none: plaintext")
	tlsCert := fs.String("tls-cert", "", "client certificate (mutual TLS)")
	tlsKey := fs.String("tls-key", "", "client key (mutual TLS)")
	serverName := fs.String("tls-server-name", "", "name to check the server certificate for")
	tokenFile := fs.String("token-file", "", "bearer token file")
	tenant := fs.String("tenant", "", "the plugin's configured tenant")
	machine := fs.String("machine", "", "device id (40 hex)")
	host := fs.String("host", "", "device computerDnsName")
	sha1 := fs.String("sha1", "", "file SHA-1")
	sha256 := fs.String("sha256", "", "file SHA-256")
	comment := fs.String("comment", "", "comment (required)")
	requestID := fs.String("request-id", "", "idempotency key (default: a new UUID)")
	timeout := fs.Float64("timeout-seconds", 600, "give up watching after N seconds")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	switch {
	case fs.NArg() != 0:
		usage("unexpected arguments")
	case (*machine == "") == (*host == ""):
		usage("exactly one of --machine or --host is required")
	case *machine != "" && !regexp.MustCompile(`^[0-9a-fA-F]{40}$`).MatchString(*machine):
		usage("--machine must be 40 hex digits")
	case (*sha1 == "") == (*sha256 == ""):
		usage("exactly one of --sha1 or --sha256 is required")
	case *comment == "":
		usage("--comment is required")
	case (*tlsCert == "") != (*tlsKey == ""):
		usage("--tls-cert and --tls-key go together")
	case (*tlsCert != "" || *serverName != "") && *tlsCA == "":
		usage("--tls-cert and --tls-server-name need --tls-ca")
	case *timeout <= 0:
		usage("--timeout-seconds must be positive")
	}
	ctx := context.Background()
	if *tokenFile != "" {
		b, err := ioutil.ReadFile(*tokenFile)
		if err != nil {
			usage("--token-file: cannot read it")
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(string(b)))
	}
	opts := []grpc.DialOption{grpc.WithInsecure()}
	if *tokenFile != "" {
		// A token over plaintext goes only to loopback or a unix socket: gRPC's local
		// credentials refuse any other address at the handshake.
		opts = []grpc.DialOption{grpc.WithTransportCredentials(local.NewCredentials())}
	}
	if *tlsCA != "" {
		pem, err := ioutil.ReadFile(*tlsCA)
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			usage("--tls-ca: no PEM certificate read")
		}
		cfg := &tls.Config{RootCAs: pool, ServerName: *serverName}
		if *tlsCert != "" {
			pair, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
			if err != nil {
				usage("--tls-cert/--tls-key: cannot load the pair")
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		opts = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	}
	conn, err := grpc.Dial(*target, opts...)
	if err != nil {
		usage("--target: " + err.Error())
	}
	defer conn.Close()
	client := defenderv1.NewResponseServiceClient(conn)
	rid := *requestID
	if rid == "" {
		rid = newUUID()
	}
	req := &defenderv1.QuarantineFileRequest{MachineId: *machine, ComputerDnsName: *host,
		Sha1: *sha1, Sha256: *sha256, Comment: *comment, Tenant: *tenant, RequestId: rid}
	// Retrying UNAVAILABLE is safe: the plugin deduplicates by request id.
	var resp *defenderv1.QuarantineFileResponse
	for attempt := 0; ; attempt++ {
		resp, err = client.QuarantineFile(ctx, req)
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || attempt == 4 {
			return rpcError(err)
		}
		time.Sleep(time.Duration(500<<attempt) * time.Millisecond)
	}
	action := resp.GetAction()
	emit(map[string]string{"event": "submitted", "action_id": action.GetId(), "request_id": rid,
		"machine_id": action.GetMachineId(), "status": action.GetStatus().String()})

	wctx, cancel := context.WithTimeout(ctx, time.Duration(*timeout*float64(time.Second)))
	defer cancel()
	var last *defenderv1.MachineAction
	for last == nil || !final(last.GetStatus()) {
		stream, err := client.WatchMachineAction(wctx, &defenderv1.WatchMachineActionRequest{Id: action.GetId(), Tenant: *tenant})
		for err == nil {
			var act *defenderv1.MachineAction
			act, err = stream.Recv()
			if err == nil {
				emit(map[string]string{"event": "status", "action_id": act.GetId(),
					"status": act.GetStatus().String(), "defender_status": act.GetDefenderStatus()})
				last = act
			}
		}
		if wctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "%s: the action %s is not final after %g s\n", prog, action.GetId(), *timeout)
			return 4
		}
		if last != nil && final(last.GetStatus()) {
			break
		}
		// The stream broke (UNAVAILABLE), or a draining plugin ended it (a CANCELLED
		// this client did not ask for): reopen it, on this or another replica.
		if c := status.Code(err); c == codes.Unavailable || c == codes.Canceled {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if s, ok := status.FromError(err); ok && s.Code() != codes.OK {
			return rpcError(err)
		}
		fmt.Fprintf(os.Stderr, "%s: the watch ended before the action was final\n", prog)
		return 3
	}
	emit(map[string]string{"event": "final", "action_id": last.GetId(), "status": last.GetStatus().String(),
		"defender_status": last.GetDefenderStatus()})
	if last.GetStatus() == defenderv1.MachineActionStatus_MACHINE_ACTION_STATUS_SUCCEEDED {
		return 0
	}
	return 1
}
