package client

import (
	"context"
	"errors"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a call that the server (or gRPC on its behalf) ended with a status other than OK.
// Every error from a Client call that carries a gRPC status is an *Error; get it with errors.As,
// or test its kind with the IsX helpers below.
type Error struct {
	// Code is the gRPC status code, as the API documents it (see the IsX helpers).
	Code codes.Code
	// Message is the server's message, meant for a person: it names the field, model or job.
	Message string

	status *status.Status
}

// Error formats the error as "NOT_FOUND: model \"x\" is not known", the code as gRPC names it
// in every language, so that what a person sees matches the API's documentation.
func (e *Error) Error() string {
	return CodeName(e.Code) + ": " + e.Message
}

// GRPCStatus returns the status the error was made from, so status.FromError and status.Code
// keep working on errors from this package.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// Is makes errors.Is(err, context.Canceled) and errors.Is(err, context.DeadlineExceeded) true
// for CANCELLED and DEADLINE_EXCEEDED, which is how gRPC reports a cancelled or expired context.
func (e *Error) Is(target error) bool {
	switch target {
	case context.Canceled:
		return e.Code == codes.Canceled
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	}
	return false
}

// fromRPC turns an error from a generated stub into an *Error when it carries a gRPC status.
// Errors without one (there should be none from a stub) are returned as they are.
func fromRPC(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &Error{Code: st.Code(), Message: st.Message(), status: st}
}

// codeOf finds the gRPC code of any error: from an *Error, a gRPC status anywhere in its chain,
// or a bare context error (a call cancelled before it reached gRPC). Anything else is Unknown.
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	return codes.Unknown
}

// IsInvalidArgument reports a request the server rejected: a field missing or out of range.
// The message names the field; retrying the same request will fail the same way.
func IsInvalidArgument(err error) bool { return codeOf(err) == codes.InvalidArgument }

// IsNotFound reports an unknown model or image job.
func IsNotFound(err error) bool { return codeOf(err) == codes.NotFound }

// IsResourceExhausted reports that a model cannot fit the server's memory budget even after
// evicting idle models, or that a queue is full; retrying later may succeed.
func IsResourceExhausted(err error) bool { return codeOf(err) == codes.ResourceExhausted }

// IsFailedPrecondition reports a model that failed to load; the message says why.
func IsFailedPrecondition(err error) bool { return codeOf(err) == codes.FailedPrecondition }

// IsUnavailable reports that the server cannot be reached, or that Triton behind it is down or
// not ready; retrying later may succeed.
func IsUnavailable(err error) bool { return codeOf(err) == codes.Unavailable }

// IsUnauthenticated reports a missing or wrong API key.
func IsUnauthenticated(err error) bool { return codeOf(err) == codes.Unauthenticated }

// IsAlreadyExists reports an image job's RequestID already used by a different request.
func IsAlreadyExists(err error) bool { return codeOf(err) == codes.AlreadyExists }

// IsPermissionDenied reports a key that is valid but not allowed to make this call.
func IsPermissionDenied(err error) bool { return codeOf(err) == codes.PermissionDenied }

// IsCanceled reports a call cancelled by either side (the caller's context included).
func IsCanceled(err error) bool { return codeOf(err) == codes.Canceled }

// IsDeadlineExceeded reports a call that ran past its deadline (the caller's context, or
// Config.RequestTimeout).
func IsDeadlineExceeded(err error) bool { return codeOf(err) == codes.DeadlineExceeded }

// codeNames are the canonical names that every gRPC implementation and the API's documentation
// use; Go's codes.Code.String spells them differently ("NotFound").
var codeNames = [...]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// codeByName maps the names of codeNames back to their codes.
var codeByName = func() map[string]codes.Code {
	m := make(map[string]codes.Code, len(codeNames))
	for c, name := range codeNames {
		m[name] = codes.Code(c)
	}
	return m
}()

// CodeName returns a code's canonical gRPC name, such as "NOT_FOUND".
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "CODE_" + strconv.Itoa(int(c))
}
