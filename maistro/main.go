// Command maistro is the command line of the inference platform's Go client:
//
//	go run main.go chat "Hello"
//	go run main.go chat            # a conversation, one message per line (or chat -i)
//	echo "Hello" | go run main.go chat
//	go run main.go generate "Once upon a time"
//	go run main.go embed "a cat sits on the mat" "a kitten rests on the rug"
//	go run main.go image generate --width 512 --height 512 "a red square"
//	go run main.go image edit --image in.png --strength 0.6 "make it blue"
//	go run main.go stats
//	go run main.go vram pin llm
//	go run main.go vram watch --interval 2s
//	go run main.go clear --wait 10s
//
// See internal/cli for the commands and their flags, and client for the library.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/inference-platform/maistro/internal/cli"
)

func main() {
	// Ctrl-C or SIGTERM cancels the call in flight, which stops the generation on the server.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
