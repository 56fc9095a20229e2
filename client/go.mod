module github.com/plugincontrol/plugincontrol/client

go 1.22

require (
	github.com/grpc-ecosystem/go-grpc-middleware/v2 v2.2.0
	github.com/plugincontrol/plugincontrol/gen v0.1.0
	go.uber.org/goleak v1.3.0
	google.golang.org/genproto/googleapis/rpc v0.0.0-20241202173237-19429a94021a
	google.golang.org/grpc v1.70.0
	google.golang.org/protobuf v1.36.5
)

require (
	golang.org/x/net v0.32.0 // indirect
	golang.org/x/sys v0.28.0 // indirect
	golang.org/x/text v0.21.0 // indirect
)
