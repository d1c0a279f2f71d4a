package server

import (
	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// WatchRequest is declared in the API; streaming state changes needs the state
// store and callback ingest, which this version does not have yet.
func (s *Service) WatchRequest(req *comfygatev1.WatchRequestRequest, _ comfygatev1.GatewayService_WatchRequestServer) error {
	if err := validateRequestRef(req.GetDeploymentId(), req.GetRequestId()); err != nil {
		return err
	}
	return errNotImplemented
}
