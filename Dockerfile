# coord-extproc: static binary on a distroless, non-root base.
#   docker build -t coord-extproc .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/coord-extproc ./cmd/coord-extproc

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/coord-extproc /coord-extproc
# In a container the loopback defaults are of no use: listen on all interfaces.
ENV COORD_LISTEN=0.0.0.0:9002 \
    COORD_METRICS_LISTEN=0.0.0.0:9090
EXPOSE 9002 9090
USER nonroot:nonroot
ENTRYPOINT ["/coord-extproc"]
CMD ["serve"]
