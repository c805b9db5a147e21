// Command chatgg is the chatgg server: `chatgg [all|serve|worker] [flags]`.
// See the README for the settings.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/chatgg/chatgg/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := server.Main(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	os.Exit(code)
}
