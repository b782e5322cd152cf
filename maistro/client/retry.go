package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// withDefaults fills the zero fields of p with the defaults and checks the rest.
func (p RetryPolicy) withDefaults() (RetryPolicy, error) {
	if p.MaxAttempts < 0 || p.InitialBackoff < 0 || p.MaxBackoff < 0 {
		return p, errors.New("retry: max attempts and backoffs must not be negative")
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultRetryMaxAttempts
	}
	if p.InitialBackoff == 0 {
		p.InitialBackoff = DefaultRetryInitialBackoff
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = DefaultRetryMaxBackoff
	}
	if p.MaxBackoff < p.InitialBackoff {
		return p, errors.New("retry: the max backoff must not be shorter than the initial backoff")
	}
	return p, nil
}

// backoff is the wait before retry n (from 1): a random duration in [d/2, d] where
// d = min(InitialBackoff * 2^(n-1), MaxBackoff). The jitter spreads out clients that lost the
// same server at the same moment.
func (p RetryPolicy) backoff(n int) time.Duration {
	d := p.InitialBackoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, p.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// retryable reports the errors worth another attempt: UNAVAILABLE only, which means that the
// call did not reach a server able to run it. Every other code says something about the
// request, or the call may have taken effect.
func retryable(err error) bool {
	return status.Code(err) == codes.Unavailable
}

// do runs attempt until it succeeds, fails with an error that is not retryable, has been tried
// p.MaxAttempts times, or ctx ends during a backoff; it returns the last attempt's error.
func (p RetryPolicy) do(ctx context.Context, attempt func() error) error {
	for n := 1; ; n++ {
		err := attempt()
		if err == nil || n >= p.MaxAttempts || !retryable(err) {
			return err
		}
		t := time.NewTimer(p.backoff(n))
		select {
		case <-ctx.Done():
			t.Stop()
			return err // the server's UNAVAILABLE says more than "context canceled"
		case <-t.C:
		}
	}
}

// retryUnary retries unary calls that fail with UNAVAILABLE, under p.
func retryUnary(p RetryPolicy) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
	) error {
		return p.do(ctx, func() error { return invoker(ctx, method, req, reply, cc, opts...) })
	}
}
