"""Server reflection, `grpc.reflection.v1` and `v1alpha`, with the protos' comments.

grpcio-reflection serves only v1alpha, from the runtime descriptor pool,
which holds no source info (protoc's Python output drops it), so `grpcurl
describe` showed no comments. This serves both versions from one servicer
(their messages differ only in the package name, so v1alpha's classes read
and write v1 too) and answers with the descriptor set that
tools/gen_protos.py writes with source info.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib import resources

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, text_format
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2 as pb

# Written by tools/gen_protos.py (DESCRIPTOR_SET) beside the stubs of cursor.v1.
SOURCE_INFO_SET = "descriptor_set.binpb"
V1ALPHA_PACKAGE = pb.DESCRIPTOR.package
V1_PACKAGE = "grpc.reflection.v1"
V1ALPHA = f"{V1ALPHA_PACKAGE}.ServerReflection"
V1 = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def _v1_file(v1alpha: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """v1's file, for clients that describe it: v1alpha's under the new
    package (without its options, which say `deprecated`)."""
    without_options = descriptor_pb2.FileDescriptorProto()
    without_options.CopyFrom(v1alpha)
    without_options.ClearField("options")
    # What is left names the package only as itself and in type names (`.grpc.reflection.v1alpha.…`).
    text = text_format.MessageToString(without_options).replace(V1ALPHA_PACKAGE, V1_PACKAGE)
    v1 = text_format.Parse(text, descriptor_pb2.FileDescriptorProto())
    v1.name = V1_FILE
    return v1


class ReflectionServicer:
    """Answers reflection requests from the files of the given services, the
    `also` files, and their imports, each with its source info where the set
    has it."""

    def __init__(self, service_names: Iterable[str], source_info: descriptor_pb2.FileDescriptorSet,
                 also: Iterable[descriptor.FileDescriptor] = ()) -> None:
        with_source = {file.name: file for file in source_info.file}
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

        def collect(file: descriptor.FileDescriptor) -> None:
            if file.name in files:
                return
            for dependency in file.dependencies:
                collect(dependency)
            proto = with_source.get(file.name)
            if proto is None:
                proto = descriptor_pb2.FileDescriptorProto()
                file.CopyToProto(proto)
            files[file.name] = proto

        runtime = descriptor_pool.Default()
        self.services = sorted({*service_names, V1ALPHA, V1})
        for name in self.services:
            if name != V1:
                collect(runtime.FindFileContainingSymbol(name))
        for file in also:
            collect(file)
        files[V1_FILE] = _v1_file(files[pb.DESCRIPTOR.name])
        # A pool of our own finds symbols; `collect` put every file after its imports, as Add needs.
        self._pool = descriptor_pool.DescriptorPool()
        for proto in files.values():
            self._pool.Add(proto)
        self._serialized = {name: proto.SerializeToString() for name, proto in files.items()}

    async def ServerReflectionInfo(self, requests: AsyncIterator[pb.ServerReflectionRequest],
                                   context: aio.ServicerContext[object, object],
                                   ) -> AsyncIterator[pb.ServerReflectionResponse]:
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        response = pb.ServerReflectionResponse(original_request=request)
        asked = request.WhichOneof("message_request")
        try:
            if asked == "file_by_filename":
                self._add_files(response, self._pool.FindFileByName(request.file_by_filename))
            elif asked == "file_containing_symbol":
                self._add_files(response, self._file_containing(request.file_containing_symbol))
            elif asked == "file_containing_extension":
                extendee = self._pool.FindMessageTypeByName(request.file_containing_extension.containing_type)
                extension = self._pool.FindExtensionByNumber(
                    extendee, request.file_containing_extension.extension_number)
                self._add_files(response, self._pool.FindFileContainingSymbol(extension.full_name))
            elif asked == "all_extension_numbers_of_type":
                extendee = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = response.all_extension_numbers_response
                numbers.base_type_name = extendee.full_name
                numbers.extension_number.extend(sorted(e.number for e in self._pool.FindAllExtensions(extendee)))
            elif asked == "list_services":
                response.list_services_response.service.extend(
                    pb.ServiceResponse(name=name) for name in self.services)
            else:
                response.error_response.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                response.error_response.error_message = "the request names nothing to look up"
        except KeyError:
            response.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
            response.error_response.error_message = f"{asked}: not found"
        return response

    def _file_containing(self, symbol: str) -> descriptor.FileDescriptor:
        """The pool finds no method by its name (`grpcurl describe` asks for
        one): a method's file is its service's."""
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(service_name)
            if method not in service.methods_by_name:
                raise
            return service.file

    def _add_files(self, response: pb.ServerReflectionResponse, file: descriptor.FileDescriptor) -> None:
        """The file and everything it imports, as the reference servicer sends them."""
        seen: dict[str, bytes] = {}
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name not in seen:
                seen[current.name] = self._serialized[current.name]
                pending.extend(current.dependencies)
        response.file_descriptor_response.file_descriptor_proto.extend(seen.values())


def enable(server: aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha for `service_names` (and for reflection
    itself), with the types of the errors' details: grpcurl decodes a
    `google.rpc.ErrorInfo` only when reflection knows it."""
    source_info = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("cursor.v1").joinpath(SOURCE_INFO_SET).read_bytes())
    servicer = ReflectionServicer(service_names, source_info, (status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=pb.ServerReflectionRequest.FromString,
        response_serializer=pb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(tuple(
        grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}) for name in (V1, V1ALPHA)))
