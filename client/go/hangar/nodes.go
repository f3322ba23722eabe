package hangar

import (
	"context"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ListNodes returns every node that matches filter (nil: all), across all pages, and the
// snapshot revision every page was read at: WatchNodesFrom(revision) continues from it without
// missing or repeating a change (docs/design/nodes-and-watch.md).
func (c *Client) ListNodes(ctx context.Context, filter *hangarv1.NodeFilter) ([]*hangarv1.Node, uint64, error) {
	var nodes []*hangarv1.Node
	var revision uint64
	pageToken := ""
	for {
		var page *hangarv1.ListNodesResponse
		err := c.call(ctx, true, func(ctx context.Context, t *controller) (err error) {
			page, err = t.nodes.ListNodes(ctx, &hangarv1.ListNodesRequest{Filter: filter, PageSize: c.PageSize, PageToken: pageToken})
			return err
		})
		if err != nil {
			return nil, 0, err
		}
		nodes = append(nodes, page.GetNodes()...)
		revision = page.GetRevision()
		pageToken = page.GetNextPageToken()
		if pageToken == "" {
			return nodes, revision, nil
		}
	}
}

// GetNode returns one node; NOT_FOUND with reason NODE_NOT_FOUND when no node has that id.
func (c *Client) GetNode(ctx context.Context, id string) (*hangarv1.Node, error) {
	var response *hangarv1.GetNodeResponse
	err := c.call(ctx, true, func(ctx context.Context, t *controller) (err error) {
		response, err = t.nodes.GetNode(ctx, &hangarv1.GetNodeRequest{Id: id})
		return err
	})
	if err != nil {
		return nil, err
	}
	return response.GetNode(), nil
}

// DrainNode marks a drone as draining: no new backend is placed on it. With a deadline above
// 0, backends still running on it then are soft-terminated. It is not retried, nor sent to
// another controller: UNAVAILABLE leaves it open whether the drain happened (draining again is
// harmless, so a caller may repeat it).
func (c *Client) DrainNode(ctx context.Context, id string, deadline time.Duration) (*hangarv1.Node, error) {
	request := &hangarv1.DrainNodeRequest{Id: id}
	if deadline > 0 {
		request.Deadline = durationpb.New(deadline)
	}
	var response *hangarv1.DrainNodeResponse
	err := c.call(ctx, false, func(ctx context.Context, t *controller) (err error) {
		response, err = t.nodes.DrainNode(ctx, request)
		return err
	})
	if err != nil {
		return nil, err
	}
	return response.GetNode(), nil
}

// UndrainNode undoes DrainNode; undraining a drone that is not draining succeeds.
func (c *Client) UndrainNode(ctx context.Context, id string) (*hangarv1.Node, error) {
	var response *hangarv1.UndrainNodeResponse
	err := c.call(ctx, true, func(ctx context.Context, t *controller) (err error) {
		response, err = t.nodes.UndrainNode(ctx, &hangarv1.UndrainNodeRequest{Id: id})
		return err
	})
	if err != nil {
		return nil, err
	}
	return response.GetNode(), nil
}
